//! Checkpoint weights by their Hugging Face names: reading single or sharded safetensors
//! (memory-mapped; f32, f16 and bf16 storage, converted to f32 for compute), an in-memory map for
//! converted or freshly built weights, and writing safetensors atomically.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Write as _;
use std::path::{Path, PathBuf};

use burn::tensor::{Device, Tensor, TensorData};
use safetensors::tensor::{Dtype, Metadata, TensorInfo};

use crate::error::{Error, Result};
use crate::fsutil;

/// A tensor on the host in f32, row-major.
#[derive(Clone, Debug, PartialEq)]
pub struct HostTensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

impl HostTensor {
    /// Wraps data with a shape; the element count must match.
    pub fn new(shape: Vec<usize>, data: Vec<f32>) -> Self {
        debug_assert_eq!(shape.iter().product::<usize>(), data.len());
        HostTensor { shape, data }
    }

    /// Copies a burn tensor to the host.
    pub fn from_tensor<const D: usize>(t: &Tensor<D>) -> Self {
        let shape = t.dims().to_vec();
        let data = t
            .try_to_vec_as::<f32>()
            .expect("a float tensor reads as f32");
        HostTensor { shape, data }
    }

    /// Moves the data to a device as a rank-`D` tensor (the rank must match).
    pub fn to_tensor<const D: usize>(&self, device: &Device) -> Tensor<D> {
        assert_eq!(self.shape.len(), D, "rank mismatch converting host tensor");
        Tensor::from_data(
            TensorData::new(self.data.clone(), self.shape.clone()),
            device,
        )
    }

    /// The transpose of a matrix (`[r, c]` -> `[c, r]`).
    pub fn transposed(&self) -> HostTensor {
        assert_eq!(self.shape.len(), 2, "transpose needs a matrix");
        let (r, c) = (self.shape[0], self.shape[1]);
        let mut out = vec![0.0f32; r * c];
        for i in 0..r {
            for j in 0..c {
                out[j * r + i] = self.data[i * c + j];
            }
        }
        HostTensor::new(vec![c, r], out)
    }

    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.data.len()
    }

    /// Rounds every value to bf16 and back (what a bf16 checkpoint would hold).
    pub fn round_to_bf16(&mut self) {
        for v in &mut self.data {
            *v = half::bf16::from_f32(*v).to_f32();
        }
    }
}

/// A source of named weights. Implementations: safetensors files, memory.
pub trait WeightSource {
    /// Where the weights come from, for error messages (a path or a description).
    fn location(&self) -> String;
    /// Every tensor name in the source.
    fn names(&self) -> Vec<String>;
    /// The stored shape of a tensor, or `None` when absent.
    fn shape(&self, name: &str) -> Option<Vec<usize>>;
    /// Reads a tensor as f32.
    fn read(&self, name: &str) -> Result<HostTensor>;

    /// Reads a tensor and checks its shape, with errors that name the key.
    fn read_shaped(&self, name: &str, expected: &[usize]) -> Result<HostTensor> {
        let found = self.shape(name).ok_or_else(|| Error::MissingTensor {
            key: name.to_string(),
            location: self.location(),
        })?;
        if found != expected {
            return Err(Error::ShapeMismatch {
                key: name.to_string(),
                location: self.location(),
                expected: expected.to_vec(),
                found,
            });
        }
        self.read(name)
    }
}

/// Weights held in memory (converted GGUF, freshly initialised subblocks, tests).
#[derive(Clone, Debug, Default)]
pub struct MemoryWeights {
    pub tensors: BTreeMap<String, HostTensor>,
    pub label: String,
}

impl MemoryWeights {
    /// An empty map described as `label` in errors.
    pub fn new(label: impl Into<String>) -> Self {
        MemoryWeights {
            tensors: BTreeMap::new(),
            label: label.into(),
        }
    }

    /// Adds or replaces a tensor.
    pub fn insert(&mut self, name: impl Into<String>, t: HostTensor) {
        self.tensors.insert(name.into(), t);
    }
}

impl WeightSource for MemoryWeights {
    fn location(&self) -> String {
        self.label.clone()
    }
    fn names(&self) -> Vec<String> {
        self.tensors.keys().cloned().collect()
    }
    fn shape(&self, name: &str) -> Option<Vec<usize>> {
        self.tensors.get(name).map(|t| t.shape.clone())
    }
    fn read(&self, name: &str) -> Result<HostTensor> {
        self.tensors
            .get(name)
            .cloned()
            .ok_or_else(|| Error::MissingTensor {
                key: name.to_string(),
                location: self.label.clone(),
            })
    }
}

/// A file's bytes: memory-mapped when read from disk, owned when parsed from memory (the
/// fuzz targets, and any caller that already holds the bytes).
pub(crate) enum FileBytes {
    Mapped(memmap2::Mmap),
    Owned(Vec<u8>),
}

impl FileBytes {
    pub(crate) fn map(path: &Path) -> Result<Self> {
        let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        // SAFETY: the map is read-only; a file rewritten by another process while we read it
        // is outside what we can defend against (as for every mmap-based loader).
        let mmap = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
        Ok(FileBytes::Mapped(mmap))
    }
}

impl std::ops::Deref for FileBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            FileBytes::Mapped(m) => m,
            FileBytes::Owned(v) => v,
        }
    }
}

struct MappedFile {
    path: PathBuf,
    mmap: FileBytes,
    header_len: usize,
    metadata: Metadata,
}

impl MappedFile {
    fn open(path: &Path) -> Result<Self> {
        Self::parse(path, FileBytes::map(path)?)
    }

    fn parse(path: &Path, mmap: FileBytes) -> Result<Self> {
        let (n, metadata) =
            safetensors::SafeTensors::read_metadata(&mmap).map_err(|e| Error::Safetensors {
                path: path.to_path_buf(),
                msg: describe_st_error(&e),
            })?;
        Ok(MappedFile {
            path: path.to_path_buf(),
            mmap,
            header_len: 8 + n,
            metadata,
        })
    }
}

fn describe_st_error(e: &safetensors::SafeTensorError) -> String {
    use safetensors::SafeTensorError as E;
    match e {
        E::MetadataIncompleteBuffer | E::InvalidHeaderLength | E::HeaderTooSmall => {
            format!("{e:?} (the file is truncated or not safetensors)")
        }
        other => format!("{other:?}"),
    }
}

/// The `weight_map` of a `model.safetensors.index.json`: tensor name -> shard file name. A
/// shard must be a plain file name in the checkpoint's folder: an index naming `../x` or an
/// absolute path would make loading a checkpoint read files outside it.
pub fn read_index(index: &serde_json::Value, path: &Path) -> Result<HashMap<String, String>> {
    let map = index
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| Error::config(path, "no `weight_map` object"))?;
    let mut by_name = HashMap::with_capacity(map.len());
    for (tensor, file) in map {
        let file = file
            .as_str()
            .ok_or_else(|| Error::config(path, format!("weight_map[{tensor}] is not a string")))?;
        let plain = Path::new(file).file_name().and_then(|n| n.to_str()) == Some(file);
        if !plain {
            return Err(Error::config(
                path,
                format!(
                    "weight_map[{tensor}] = {file:?} is not a file name in the checkpoint's folder"
                ),
            ));
        }
        by_name.insert(tensor.clone(), file.to_string());
    }
    Ok(by_name)
}

/// A checkpoint's safetensors: `model.safetensors`, or shards listed in
/// `model.safetensors.index.json`, memory-mapped.
pub struct SafetensorsWeights {
    location: String,
    files: Vec<MappedFile>,
    /// name -> index into `files`
    index: HashMap<String, usize>,
}

impl SafetensorsWeights {
    /// Opens the weights of a checkpoint folder (or a single `.safetensors` file).
    pub fn open(path: &Path) -> Result<Self> {
        if path.is_file() {
            return Self::from_files(path.display().to_string(), &[path.to_path_buf()], None);
        }
        let index_path = path.join("model.safetensors.index.json");
        if index_path.is_file() {
            let index: serde_json::Value = fsutil::read_json(&index_path)?;
            let by_name = read_index(&index, &index_path)?;
            let mut shard_names: Vec<&String> = by_name.values().collect();
            shard_names.sort();
            shard_names.dedup();
            let paths: Vec<PathBuf> = shard_names.iter().map(|s| path.join(s)).collect();
            return Self::from_files(index_path.display().to_string(), &paths, Some(by_name));
        }
        let single = path.join("model.safetensors");
        if single.is_file() {
            return Self::from_files(single.display().to_string(), &[single], None);
        }
        Err(Error::io(
            path,
            std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "no model.safetensors or model.safetensors.index.json",
            ),
        ))
    }

    /// Reads one safetensors file already in memory; `path` only names it in errors.
    pub fn from_bytes(path: &Path, bytes: Vec<u8>) -> Result<Self> {
        let f = MappedFile::parse(path, FileBytes::Owned(bytes))?;
        let index = f.metadata.tensors().into_keys().map(|n| (n, 0)).collect();
        Ok(SafetensorsWeights {
            location: path.display().to_string(),
            files: vec![f],
            index,
        })
    }

    fn from_files(
        location: String,
        paths: &[PathBuf],
        declared: Option<HashMap<String, String>>,
    ) -> Result<Self> {
        let mut files = Vec::new();
        let mut index = HashMap::new();
        for (i, p) in paths.iter().enumerate() {
            let f = MappedFile::open(p)?;
            for name in f.metadata.tensors().keys() {
                if let Some(declared) = &declared {
                    // The index must agree with the shard that actually holds the tensor.
                    let file_name = p.file_name().map(|n| n.to_string_lossy().into_owned());
                    if declared.get(name).map(String::as_str) != file_name.as_deref() {
                        continue;
                    }
                }
                index.insert(name.clone(), i);
            }
            files.push(f);
        }
        if let Some(declared) = &declared {
            for (name, file) in declared {
                if !index.contains_key(name) {
                    return Err(Error::MissingTensor {
                        key: name.clone(),
                        location: format!("shard {file} (listed in {location})"),
                    });
                }
            }
        }
        Ok(SafetensorsWeights {
            location,
            files,
            index,
        })
    }

    /// Reads an integer tensor (reference `input_ids`) as i64.
    pub fn read_i64(&self, name: &str) -> Result<(Vec<usize>, Vec<i64>)> {
        let (f, info) = self.info(name)?;
        let bytes = &f.mmap[f.header_len + info.data_offsets.0..f.header_len + info.data_offsets.1];
        let data = match info.dtype {
            Dtype::I64 => bytes
                .chunks_exact(8)
                .map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes")))
                .collect(),
            Dtype::I32 => bytes
                .chunks_exact(4)
                .map(|c| i32::from_le_bytes(c.try_into().expect("4 bytes")) as i64)
                .collect(),
            other => {
                return Err(Error::Safetensors {
                    path: f.path.clone(),
                    msg: format!("tensor `{name}` has dtype {other:?}, expected an integer"),
                });
            }
        };
        Ok((info.shape.clone(), data))
    }

    /// The file-level `__metadata__` entries of the first file.
    pub fn file_metadata(&self) -> BTreeMap<String, String> {
        self.files
            .first()
            .and_then(|f| f.metadata.metadata().clone())
            .map(|m| m.into_iter().collect())
            .unwrap_or_default()
    }

    /// The storage dtypes present, e.g. `{"BF16"}`.
    pub fn dtypes(&self) -> BTreeSet<String> {
        self.index
            .iter()
            .filter_map(|(n, &i)| self.files[i].metadata.info(n))
            .map(|info| format!("{:?}", info.dtype))
            .collect()
    }

    fn info(&self, name: &str) -> Result<(&MappedFile, &safetensors::tensor::TensorInfo)> {
        let missing = || Error::MissingTensor {
            key: name.to_string(),
            location: self.location.clone(),
        };
        let &i = self.index.get(name).ok_or_else(missing)?;
        let f = &self.files[i];
        let info = f.metadata.info(name).ok_or_else(missing)?;
        Ok((f, info))
    }
}

impl WeightSource for SafetensorsWeights {
    fn location(&self) -> String {
        self.location.clone()
    }

    fn names(&self) -> Vec<String> {
        let mut v: Vec<String> = self.index.keys().cloned().collect();
        v.sort();
        v
    }

    fn shape(&self, name: &str) -> Option<Vec<usize>> {
        self.info(name).ok().map(|(_, i)| i.shape.clone())
    }

    fn read(&self, name: &str) -> Result<HostTensor> {
        let (f, info) = self.info(name)?;
        let (start, end) = (
            f.header_len + info.data_offsets.0,
            f.header_len + info.data_offsets.1,
        );
        let data = convert(&f.mmap[start..end], info.dtype, name, &f.path)?;
        // The tensor is materialised: let its file pages go, so a parent read layer by layer
        // never holds the mapped file on top of what it loaded (they count in the process's
        // resident memory until the kernel needs them back).
        #[cfg(unix)]
        if let FileBytes::Mapped(m) = &f.mmap {
            // SAFETY: the map is read-only and file-backed: a dropped page is read again from
            // the file on the next access, with the same bytes, so no live slice changes.
            let _ = unsafe {
                m.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, start, end - start)
            };
        }
        Ok(HostTensor::new(info.shape.clone(), data))
    }
}

/// Little-endian `bytes` of `dtype` as f32.
fn convert(bytes: &[u8], dtype: Dtype, name: &str, path: &Path) -> Result<Vec<f32>> {
    {
        Ok(match dtype {
            Dtype::F32 => bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")))
                .collect(),
            Dtype::F16 => bytes
                .chunks_exact(2)
                .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            Dtype::BF16 => bytes
                .chunks_exact(2)
                .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            Dtype::F64 => bytes
                .chunks_exact(8)
                .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")) as f32)
                .collect(),
            other => {
                return Err(Error::Safetensors {
                    path: path.to_path_buf(),
                    msg: format!(
                        "tensor `{name}` has dtype {other:?}; weights must be F32, F16, BF16 or F64"
                    ),
                });
            }
        })
    }
}

/// Storage dtype when writing safetensors.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreDtype {
    F32,
    Bf16,
    F16,
}

impl StoreDtype {
    /// The transformers name (`float32`, `bfloat16`, `float16`).
    pub fn torch_name(self) -> &'static str {
        match self {
            StoreDtype::F32 => "float32",
            StoreDtype::Bf16 => "bfloat16",
            StoreDtype::F16 => "float16",
        }
    }

    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            StoreDtype::F32 => 4,
            _ => 2,
        }
    }
}

impl std::str::FromStr for StoreDtype {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "f32" | "float32" => Ok(StoreDtype::F32),
            "bf16" | "bfloat16" => Ok(StoreDtype::Bf16),
            "f16" | "float16" => Ok(StoreDtype::F16),
            other => Err(Error::invalid(format!(
                "unknown dtype `{other}` (expected f32, bf16 or f16)"
            ))),
        }
    }
}

/// Writes `tensors` as a safetensors file (atomically), converting to `dtype`, one tensor at a
/// time: the file is streamed from the tensors given, never assembled in memory (a 70B export
/// would otherwise need its size again in RAM). Bytes are those of `safetensors::serialize`:
/// the same order (by name within a dtype), header and padding.
pub fn write_safetensors<'a>(
    path: &Path,
    tensors: impl IntoIterator<Item = (&'a str, &'a HostTensor)>,
    dtype: StoreDtype,
    metadata: Option<HashMap<String, String>>,
) -> Result<()> {
    let by_name: BTreeMap<&str, &HostTensor> = tensors.into_iter().collect();
    let infos: Vec<(String, Vec<usize>)> = by_name
        .iter()
        .map(|(n, t)| (n.to_string(), t.shape.clone()))
        .collect();
    for (n, t) in &by_name {
        let numel: usize = t.shape.iter().product();
        if numel != t.data.len() {
            return Err(Error::Safetensors {
                path: path.to_path_buf(),
                msg: format!(
                    "tensor `{n}` has shape {:?} but {} values",
                    t.shape,
                    t.data.len()
                ),
            });
        }
    }
    write_safetensors_with(path, &infos, dtype, metadata, &mut |n| {
        Ok(by_name[n].clone())
    })
}

/// [`write_safetensors`] for tensors made on demand: `infos` gives each name and shape for the
/// header, and `make` is asked for each tensor once, in the file's order (by name), so only the
/// tensor being written is in memory (plus whatever `make` caches).
pub fn write_safetensors_with(
    path: &Path,
    infos: &[(String, Vec<usize>)],
    dtype: StoreDtype,
    metadata: Option<HashMap<String, String>>,
    make: &mut dyn FnMut(&str) -> Result<HostTensor>,
) -> Result<()> {
    let bad = |msg: String| Error::Safetensors {
        path: path.to_path_buf(),
        msg,
    };
    let mut infos: Vec<&(String, Vec<usize>)> = infos.iter().collect();
    infos.sort_by(|a, b| a.0.cmp(&b.0));
    let st_dtype = match dtype {
        StoreDtype::F32 => Dtype::F32,
        StoreDtype::Bf16 => Dtype::BF16,
        StoreDtype::F16 => Dtype::F16,
    };
    let mut offset = 0;
    let mut header_infos = Vec::with_capacity(infos.len());
    for (name, shape) in &infos {
        let n = shape.iter().product::<usize>() * dtype.size();
        header_infos.push((
            name.clone(),
            TensorInfo {
                dtype: st_dtype,
                shape: shape.clone(),
                data_offsets: (offset, offset + n),
            },
        ));
        offset += n;
    }
    let header = Metadata::new(metadata, header_infos)
        .map_err(|e| bad(format!("cannot describe the tensors: {e:?}")))?;
    let mut header = serde_json::to_value(&header)
        .map_err(|e| bad(format!("cannot serialise the header: {e}")))?;
    // The metadata map comes in a HashMap's order, which changes from process to process:
    // sorted, the same inputs always give the same bytes (and checksums).
    if let Some(m) = header
        .get_mut("__metadata__")
        .and_then(serde_json::Value::as_object_mut)
    {
        let mut kv: Vec<(String, serde_json::Value)> = std::mem::take(m).into_iter().collect();
        kv.sort_by(|a, b| a.0.cmp(&b.0));
        m.extend(kv);
    }
    let mut header = serde_json::to_string(&header)
        .map_err(|e| bad(format!("cannot serialise the header: {e}")))?
        .into_bytes();
    // The format's 8-byte alignment of the data, padded with spaces as safetensors does.
    header.resize(header.len().next_multiple_of(8), b' ');
    let mut failure = None;
    fsutil::write_atomic_with(path, |w| {
        w.write_all(&(header.len() as u64).to_le_bytes())?;
        w.write_all(&header)?;
        // A bounded buffer per chunk of values: memory stays flat whatever the tensor's size.
        let mut buf = Vec::with_capacity(CHUNK * 4);
        for (name, shape) in &infos {
            let t = match make(name) {
                Ok(t) if t.shape == *shape && t.data.len() == shape.iter().product::<usize>() => t,
                Ok(t) => {
                    failure = Some(bad(format!(
                        "tensor `{name}` was announced as {shape:?} but made as {:?} with {} values",
                        t.shape,
                        t.data.len()
                    )));
                    return Err(std::io::Error::other("inconsistent tensor"));
                }
                Err(e) => {
                    failure = Some(e);
                    return Err(std::io::Error::other("a tensor could not be made"));
                }
            };
            for chunk in t.data.chunks(CHUNK) {
                buf.clear();
                match dtype {
                    StoreDtype::F32 => chunk
                        .iter()
                        .for_each(|v| buf.extend_from_slice(&v.to_le_bytes())),
                    StoreDtype::Bf16 => chunk.iter().for_each(|v| {
                        buf.extend_from_slice(&half::bf16::from_f32(*v).to_le_bytes())
                    }),
                    StoreDtype::F16 => chunk.iter().for_each(|v| {
                        buf.extend_from_slice(&half::f16::from_f32(*v).to_le_bytes())
                    }),
                }
                w.write_all(&buf)?;
            }
        }
        Ok(())
    })
    .map_err(|e| failure.take().unwrap_or(e))
}

/// Values converted and written per write call.
const CHUNK: usize = 1 << 16;

/// The largest shard an export writes (Hugging Face's default `max_shard_size`, "5GB").
pub const MAX_SHARD_BYTES: usize = 5_000_000_000;

/// Writes a checkpoint folder's weights: `model.safetensors` when they fit in `max_shard_bytes`,
/// else `model-0000i-of-0000n.safetensors` files of at most that size each (a tensor larger
/// than it gets a file of its own) and `model.safetensors.index.json` (written last), as
/// transformers' `save_pretrained` does. Tensors go into shards in the order given; weights
/// files of an earlier export into `dir` under the other layout are removed. Returns the files
/// written.
pub fn write_weights_folder<'a>(
    dir: &Path,
    tensors: &[(&'a str, &'a HostTensor)],
    dtype: StoreDtype,
    metadata: Option<HashMap<String, String>>,
    max_shard_bytes: usize,
) -> Result<Vec<PathBuf>> {
    let by_name: BTreeMap<&str, &HostTensor> = tensors.iter().copied().collect();
    let infos: Vec<(String, Vec<usize>)> = tensors
        .iter()
        .map(|(n, t)| (n.to_string(), t.shape.clone()))
        .collect();
    write_weights_folder_with(dir, &infos, dtype, metadata, max_shard_bytes, &mut |n| {
        Ok(by_name[n].clone())
    })
}

/// [`write_weights_folder`] for tensors made on demand (names and shapes in `infos`, in the
/// order the shards take them); `make` is asked for each tensor once, shard by shard in each
/// file's order (by name).
pub fn write_weights_folder_with(
    dir: &Path,
    infos: &[(String, Vec<usize>)],
    dtype: StoreDtype,
    metadata: Option<HashMap<String, String>>,
    max_shard_bytes: usize,
    make: &mut dyn FnMut(&str) -> Result<HostTensor>,
) -> Result<Vec<PathBuf>> {
    let bytes = |shape: &[usize]| shape.iter().product::<usize>() * dtype.size();
    let mut shards: Vec<Vec<(String, Vec<usize>)>> = vec![vec![]];
    let mut size = 0;
    for (n, shape) in infos {
        let last = shards.last_mut().expect("one shard at least");
        if !last.is_empty() && size + bytes(shape) > max_shard_bytes {
            shards.push(vec![(n.clone(), shape.clone())]);
            size = bytes(shape);
        } else {
            last.push((n.clone(), shape.clone()));
            size += bytes(shape);
        }
    }
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let index = dir.join("model.safetensors.index.json");
    let stale = |keep: &[PathBuf]| -> Result<()> {
        let entries = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let weights = name == "model.safetensors"
                || (name.starts_with("model-") && name.ends_with(".safetensors"))
                || name == "model.safetensors.index.json";
            if weights && !keep.contains(&e.path()) {
                std::fs::remove_file(e.path()).map_err(|err| Error::io(e.path(), err))?;
            }
        }
        Ok(())
    };
    if shards.len() == 1 {
        let p = dir.join("model.safetensors");
        write_safetensors_with(&p, &shards[0], dtype, metadata, make)?;
        stale(std::slice::from_ref(&p))?;
        return Ok(vec![p]);
    }
    let n = shards.len();
    let mut written = Vec::with_capacity(n + 1);
    let mut weight_map = serde_json::Map::new();
    for (i, shard) in shards.iter().enumerate() {
        let name = format!("model-{:05}-of-{n:05}.safetensors", i + 1);
        let p = dir.join(&name);
        write_safetensors_with(&p, shard, dtype, metadata.clone(), make)?;
        for (t, _) in shard {
            weight_map.insert(t.clone(), name.clone().into());
        }
        written.push(p);
    }
    let total: usize = infos.iter().map(|(_, s)| bytes(s)).sum();
    fsutil::write_json(
        &index,
        &serde_json::json!({"metadata": {"total_size": total}, "weight_map": weight_map}),
    )?;
    written.push(index);
    stale(&written)?;
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn big_exports_are_sharded_with_an_index_that_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let ts: Vec<(String, HostTensor)> = (0..5)
            .map(|i| (format!("t{i}"), HostTensor::new(vec![4], vec![i as f32; 4])))
            .collect();
        let refs: Vec<(&str, &HostTensor)> = ts.iter().map(|(n, t)| (n.as_str(), t)).collect();
        // 16 bytes each in f32; at most 40 per shard: 2 + 2 + 1.
        let files = write_weights_folder(dir.path(), &refs, StoreDtype::F32, None, 40).unwrap();
        let names: Vec<String> = files
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            names,
            [
                "model-00001-of-00003.safetensors",
                "model-00002-of-00003.safetensors",
                "model-00003-of-00003.safetensors",
                "model.safetensors.index.json"
            ]
        );
        let w = SafetensorsWeights::open(dir.path()).unwrap();
        for (n, t) in &ts {
            assert_eq!(w.read(n).unwrap().data, t.data, "{n}");
        }
        let index: serde_json::Value = fsutil::read_json(&files[3]).unwrap();
        assert_eq!(index["metadata"]["total_size"], 80);
        // Exported again in one file: the shards and index go.
        write_weights_folder(dir.path(), &refs, StoreDtype::F32, None, MAX_SHARD_BYTES).unwrap();
        let left: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(left, ["model.safetensors"]);
        assert_eq!(
            SafetensorsWeights::open(dir.path())
                .unwrap()
                .read("t4")
                .unwrap()
                .data,
            vec![4.0; 4]
        );
    }

    #[test]
    fn a_tensor_made_unlike_its_announcement_fails_the_write_and_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("w.safetensors");
        let infos = vec![("a".to_string(), vec![2]), ("b".to_string(), vec![3])];
        let mut asked = vec![];
        let e = write_safetensors_with(&p, &infos, StoreDtype::F32, None, &mut |n| {
            asked.push(n.to_string());
            Ok(HostTensor::new(vec![2], vec![1.0, 2.0]))
        })
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("`b` was announced as [3] but made as [2]"),
            "{e}"
        );
        assert_eq!(asked, ["a", "b"], "made once each, in the file's order");
        assert!(
            std::fs::read_dir(dir.path()).unwrap().next().is_none(),
            "no file, no temp"
        );
    }

    #[test]
    fn streamed_files_are_the_bytes_safetensors_serialises() {
        let m = sample();
        for dtype in [StoreDtype::F32, StoreDtype::Bf16, StoreDtype::F16] {
            let dir = tempfile::tempdir().unwrap();
            let p = dir.path().join("w.safetensors");
            let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
            write_safetensors(
                &p,
                m.tensors.iter().map(|(k, v)| (k.as_str(), v)),
                dtype,
                Some(meta.clone()),
            )
            .unwrap();
            // The reference: the crate's own serialiser over the same converted bytes.
            let (st, enc): (Dtype, fn(f32) -> Vec<u8>) = match dtype {
                StoreDtype::F32 => (Dtype::F32, |v| v.to_le_bytes().to_vec()),
                StoreDtype::Bf16 => (Dtype::BF16, |v| {
                    half::bf16::from_f32(v).to_le_bytes().to_vec()
                }),
                StoreDtype::F16 => (Dtype::F16, |v| {
                    half::f16::from_f32(v).to_le_bytes().to_vec()
                }),
            };
            let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = m
                .tensors
                .iter()
                .map(|(k, t)| {
                    (
                        k.clone(),
                        t.shape.clone(),
                        t.data.iter().flat_map(|v| enc(*v)).collect(),
                    )
                })
                .collect();
            let views: Vec<(String, safetensors::tensor::TensorView)> = bytes
                .iter()
                .map(|(k, s, b)| {
                    (
                        k.clone(),
                        safetensors::tensor::TensorView::new(st, s.clone(), b).unwrap(),
                    )
                })
                .collect();
            let want = safetensors::serialize(views, Some(meta)).unwrap();
            assert_eq!(std::fs::read(&p).unwrap(), want, "{dtype:?}");
        }
        // Several metadata keys: the bytes do not depend on a HashMap's order.
        let dir = tempfile::tempdir().unwrap();
        let files: Vec<Vec<u8>> = (0..2)
            .map(|i| {
                let meta: HashMap<String, String> =
                    (0..8).map(|k| (format!("k{k}"), format!("v{k}"))).collect();
                let p = dir.path().join(format!("{i}.safetensors"));
                write_safetensors(
                    &p,
                    m.tensors.iter().map(|(k, v)| (k.as_str(), v)),
                    StoreDtype::F32,
                    Some(meta),
                )
                .unwrap();
                std::fs::read(&p).unwrap()
            })
            .collect();
        assert_eq!(files[0], files[1]);
        let wrong = HostTensor {
            shape: vec![2, 2],
            data: vec![1.0; 3],
        };
        let e = write_safetensors(
            &dir.path().join("x"),
            [("w", &wrong)],
            StoreDtype::F32,
            None,
        )
        .unwrap_err();
        assert!(
            e.to_string().contains("`w` has shape [2, 2] but 3 values"),
            "{e}"
        );
    }

    fn sample() -> MemoryWeights {
        let mut m = MemoryWeights::new("test");
        m.insert(
            "a.weight",
            HostTensor::new(vec![2, 3], vec![1., 2., 3., 4., 5., 6.]),
        );
        m.insert("b", HostTensor::new(vec![1], vec![0.5]));
        m
    }

    #[test]
    fn round_trips_every_storage_dtype() {
        let dir = tempfile::tempdir().unwrap();
        let m = sample();
        for dt in [StoreDtype::F32, StoreDtype::Bf16, StoreDtype::F16] {
            let p = dir.path().join(format!("{dt:?}.safetensors"));
            write_safetensors(&p, m.tensors.iter().map(|(k, v)| (k.as_str(), v)), dt, None)
                .unwrap();
            let r = SafetensorsWeights::open(&p).unwrap();
            assert_eq!(r.names(), vec!["a.weight", "b"]);
            // These values are exact in every format.
            assert_eq!(r.read("a.weight").unwrap(), m.tensors["a.weight"]);
        }
    }

    #[test]
    fn shape_and_missing_errors_name_the_key() {
        let m = sample();
        let e = m.read_shaped("a.weight", &[3, 2]).unwrap_err().to_string();
        assert!(e.contains("a.weight") && e.contains("[2, 3]"), "{e}");
        let e = m.read_shaped("nope", &[1]).unwrap_err().to_string();
        assert!(e.contains("`nope` is missing"), "{e}");
    }

    #[test]
    fn truncated_file_is_reported_with_its_path() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("model.safetensors");
        let m = sample();
        write_safetensors(
            &p,
            m.tensors.iter().map(|(k, v)| (k.as_str(), v)),
            StoreDtype::F32,
            None,
        )
        .unwrap();
        let bytes = std::fs::read(&p).unwrap();
        std::fs::write(&p, &bytes[..bytes.len() - 5]).unwrap();
        let e = SafetensorsWeights::open(dir.path())
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains("model.safetensors") && e.contains("truncated"),
            "{e}"
        );
    }

    /// An index is data from the internet: its shard names may not leave the folder.
    #[test]
    fn an_index_naming_files_outside_the_folder_is_refused() {
        let p = Path::new("ckpt/model.safetensors.index.json");
        for bad in [
            "../secret.safetensors",
            "/etc/passwd",
            "sub/a.safetensors",
            "..",
            "",
        ] {
            let v = serde_json::json!({"weight_map": {"lm_head.weight": bad}});
            let e = read_index(&v, p).unwrap_err().to_string();
            assert!(
                e.contains("is not a file name in the checkpoint's folder"),
                "{bad}: {e}"
            );
        }
        let v = serde_json::json!({"weight_map": {"lm_head.weight": "model-00001-of-00002.safetensors"}});
        assert_eq!(
            read_index(&v, p).unwrap()["lm_head.weight"],
            "model-00001-of-00002.safetensors"
        );
    }

    #[test]
    fn sharded_checkpoints_follow_the_index() {
        let dir = tempfile::tempdir().unwrap();
        let m = sample();
        let a = &m.tensors["a.weight"];
        let b = &m.tensors["b"];
        write_safetensors(
            &dir.path().join("model-00001-of-00002.safetensors"),
            [("a.weight", a)],
            StoreDtype::F32,
            None,
        )
        .unwrap();
        write_safetensors(
            &dir.path().join("model-00002-of-00002.safetensors"),
            [("b", b)],
            StoreDtype::Bf16,
            None,
        )
        .unwrap();
        let index = serde_json::json!({"metadata": {}, "weight_map": {
            "a.weight": "model-00001-of-00002.safetensors",
            "b": "model-00002-of-00002.safetensors"}});
        fsutil::write_json(&dir.path().join("model.safetensors.index.json"), &index).unwrap();
        let r = SafetensorsWeights::open(dir.path()).unwrap();
        assert_eq!(r.read("b").unwrap().data, vec![0.5]);
        assert_eq!(r.read("a.weight").unwrap().shape, vec![2, 3]);
    }

    #[test]
    fn missing_checkpoint_names_the_folder() {
        let dir = tempfile::tempdir().unwrap();
        let e = SafetensorsWeights::open(dir.path())
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("no model.safetensors"), "{e}");
    }
}
