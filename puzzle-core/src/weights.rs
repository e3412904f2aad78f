//! Checkpoint weights by their Hugging Face names: reading single or sharded safetensors
//! (memory-mapped; f32, f16 and bf16 storage, converted to f32 for compute), an in-memory map for
//! converted or freshly built weights, and writing safetensors atomically.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use burn::tensor::{Device, Tensor, TensorData};
use safetensors::tensor::{Dtype, Metadata};

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
        let bytes = &f.mmap[f.header_len + info.data_offsets.0..f.header_len + info.data_offsets.1];
        let data: Vec<f32> = match info.dtype {
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
                    path: f.path.clone(),
                    msg: format!(
                        "tensor `{name}` has dtype {other:?}; weights must be F32, F16, BF16 or F64"
                    ),
                });
            }
        };
        Ok(HostTensor::new(info.shape.clone(), data))
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

struct Encoded {
    dtype: Dtype,
    shape: Vec<usize>,
    bytes: Vec<u8>,
}

impl safetensors::View for &Encoded {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        std::borrow::Cow::Borrowed(&self.bytes)
    }
    fn data_len(&self) -> usize {
        self.bytes.len()
    }
}

/// Writes tensors to a safetensors file atomically, in the given storage dtype.
pub fn write_safetensors<'a>(
    path: &Path,
    tensors: impl IntoIterator<Item = (&'a str, &'a HostTensor)>,
    dtype: StoreDtype,
    metadata: Option<HashMap<String, String>>,
) -> Result<()> {
    let encoded: Vec<(String, Encoded)> = tensors
        .into_iter()
        .map(|(name, t)| {
            let (dt, bytes) = match dtype {
                StoreDtype::F32 => (
                    Dtype::F32,
                    t.data.iter().flat_map(|v| v.to_le_bytes()).collect(),
                ),
                StoreDtype::Bf16 => (
                    Dtype::BF16,
                    t.data
                        .iter()
                        .flat_map(|v| half::bf16::from_f32(*v).to_le_bytes())
                        .collect(),
                ),
                StoreDtype::F16 => (
                    Dtype::F16,
                    t.data
                        .iter()
                        .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
                        .collect(),
                ),
            };
            (
                name.to_string(),
                Encoded {
                    dtype: dt,
                    shape: t.shape.clone(),
                    bytes,
                },
            )
        })
        .collect();
    let views: Vec<(&str, &Encoded)> = encoded.iter().map(|(n, e)| (n.as_str(), e)).collect();
    let bytes = safetensors::serialize(views, metadata).map_err(|e| Error::Safetensors {
        path: path.to_path_buf(),
        msg: format!("cannot serialise: {e:?}"),
    })?;
    fsutil::write_atomic(path, &bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

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
