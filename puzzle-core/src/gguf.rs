//! GGUF (llama.cpp) reading: header, metadata, tensor infos and dequantisation to f32.
//!
//! Layout (v2/v3): magic `GGUF`, version u32, tensor count u64, metadata count u64, metadata
//! key/values, tensor infos (name, dims in ggml order = fastest first, type, offset), then the
//! data section aligned to `general.alignment` (32 by default). Quantised types are stored in
//! blocks; the dequantisation formulas follow ggml's reference `dequantize_row_*`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use half::{bf16, f16};

use crate::error::{Error, Result};
use crate::weights::{FileBytes, HostTensor};

/// A metadata value.
#[derive(Clone, Debug, PartialEq)]
pub enum GgufValue {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    U64(u64),
    I64(i64),
    F32(f32),
    F64(f64),
    Bool(bool),
    String(String),
    Array(Vec<GgufValue>),
}

impl GgufValue {
    /// The value as an unsigned integer, when it is a non-negative integer.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            GgufValue::U8(v) => Some(v as u64),
            GgufValue::U16(v) => Some(v as u64),
            GgufValue::U32(v) => Some(v as u64),
            GgufValue::U64(v) => Some(v),
            GgufValue::I8(v) if v >= 0 => Some(v as u64),
            GgufValue::I16(v) if v >= 0 => Some(v as u64),
            GgufValue::I32(v) if v >= 0 => Some(v as u64),
            GgufValue::I64(v) if v >= 0 => Some(v as u64),
            _ => None,
        }
    }

    /// The value as a float, when numeric.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            GgufValue::F32(v) => Some(v as f64),
            GgufValue::F64(v) => Some(v),
            _ => self.as_u64().map(|v| v as f64),
        }
    }

    /// The value as a string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            GgufValue::String(s) => Some(s),
            _ => None,
        }
    }

    /// The value as an array.
    pub fn as_array(&self) -> Option<&[GgufValue]> {
        match self {
            GgufValue::Array(a) => Some(a),
            _ => None,
        }
    }
}

/// ggml tensor types this reader knows by name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GgmlType {
    F32,
    F16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q4K,
    Q5K,
    Q6K,
    Bf16,
    /// Known to exist but not dequantised here.
    Other(u32),
}

impl GgmlType {
    pub fn from_id(id: u32) -> Self {
        match id {
            0 => GgmlType::F32,
            1 => GgmlType::F16,
            2 => GgmlType::Q4_0,
            3 => GgmlType::Q4_1,
            6 => GgmlType::Q5_0,
            7 => GgmlType::Q5_1,
            8 => GgmlType::Q8_0,
            12 => GgmlType::Q4K,
            13 => GgmlType::Q5K,
            14 => GgmlType::Q6K,
            30 => GgmlType::Bf16,
            other => GgmlType::Other(other),
        }
    }

    /// `(elements per block, bytes per block)`, or `None` when unsupported.
    pub fn block(self) -> Option<(usize, usize)> {
        Some(match self {
            GgmlType::F32 => (1, 4),
            GgmlType::F16 | GgmlType::Bf16 => (1, 2),
            GgmlType::Q4_0 => (32, 18),
            GgmlType::Q4_1 => (32, 20),
            GgmlType::Q5_0 => (32, 22),
            GgmlType::Q5_1 => (32, 24),
            GgmlType::Q8_0 => (32, 34),
            GgmlType::Q4K => (256, 144),
            GgmlType::Q5K => (256, 176),
            GgmlType::Q6K => (256, 210),
            GgmlType::Other(_) => return None,
        })
    }

    /// ggml's name for the type.
    pub fn name(self) -> String {
        match self {
            GgmlType::F32 => "F32".into(),
            GgmlType::F16 => "F16".into(),
            GgmlType::Q4_0 => "Q4_0".into(),
            GgmlType::Q4_1 => "Q4_1".into(),
            GgmlType::Q5_0 => "Q5_0".into(),
            GgmlType::Q5_1 => "Q5_1".into(),
            GgmlType::Q8_0 => "Q8_0".into(),
            GgmlType::Q4K => "Q4_K".into(),
            GgmlType::Q5K => "Q5_K".into(),
            GgmlType::Q6K => "Q6_K".into(),
            GgmlType::Bf16 => "BF16".into(),
            GgmlType::Other(id) => {
                let known = [
                    (9, "Q8_1"),
                    (10, "Q2_K"),
                    (11, "Q3_K"),
                    (15, "Q8_K"),
                    (16, "IQ2_XXS"),
                    (17, "IQ2_XS"),
                    (18, "IQ3_XXS"),
                    (19, "IQ1_S"),
                    (20, "IQ4_NL"),
                    (21, "IQ3_S"),
                    (22, "IQ2_S"),
                    (23, "IQ4_XS"),
                    (24, "I8"),
                    (25, "I16"),
                    (26, "I32"),
                    (27, "I64"),
                    (28, "F64"),
                    (29, "IQ1_M"),
                ];
                known
                    .iter()
                    .find(|(k, _)| *k == id)
                    .map(|(_, n)| n.to_string())
                    .unwrap_or_else(|| format!("type id {id}"))
            }
        }
    }
}

/// One tensor's header entry.
#[derive(Clone, Debug)]
pub struct GgufTensorInfo {
    pub name: String,
    /// Dimensions in ggml order (fastest-varying first).
    pub dims: Vec<usize>,
    pub ggml_type: GgmlType,
    /// Offset from the start of the data section.
    pub offset: usize,
}

impl GgufTensorInfo {
    /// Row-major shape (ggml dims reversed), as safetensors and torch see it.
    pub fn shape(&self) -> Vec<usize> {
        self.dims.iter().rev().copied().collect()
    }

    /// Element count.
    pub fn numel(&self) -> usize {
        self.dims.iter().product()
    }
}

/// An open GGUF file.
pub struct GgufFile {
    path: PathBuf,
    mmap: FileBytes,
    pub version: u32,
    pub metadata: BTreeMap<String, GgufValue>,
    pub tensors: Vec<GgufTensorInfo>,
    data_start: usize,
}

struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
    path: &'a Path,
}

impl<'a> Cursor<'a> {
    fn err(&self, msg: impl Into<String>) -> Error {
        Error::Gguf {
            path: self.path.to_path_buf(),
            msg: format!("{} (at byte {})", msg.into(), self.pos),
        }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.buf.len())
            .ok_or_else(|| self.err(format!("file ends early: needed {n} more bytes")))?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16> {
        Ok(u16::from_le_bytes(self.take(2)?.try_into().expect("2")))
    }
    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4")))
    }
    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8")))
    }
    fn len(&mut self, what: &str) -> Result<usize> {
        let n = self.u64()?;
        // Guard absurd lengths from corrupt files before allocating.
        if n > self.buf.len() as u64 {
            return Err(self.err(format!("{what} length {n} exceeds the file size")));
        }
        Ok(n as usize)
    }
    fn string(&mut self) -> Result<String> {
        let n = self.len("string")?;
        let b = self.take(n)?;
        String::from_utf8(b.to_vec()).map_err(|_| self.err("string is not UTF-8"))
    }

    fn value(&mut self, ty: u32, depth: usize) -> Result<GgufValue> {
        Ok(match ty {
            0 => GgufValue::U8(self.u8()?),
            1 => GgufValue::I8(self.u8()? as i8),
            2 => GgufValue::U16(self.u16()?),
            3 => GgufValue::I16(self.u16()? as i16),
            4 => GgufValue::U32(self.u32()?),
            5 => GgufValue::I32(self.u32()? as i32),
            6 => GgufValue::F32(f32::from_bits(self.u32()?)),
            7 => GgufValue::Bool(self.u8()? != 0),
            8 => GgufValue::String(self.string()?),
            9 => {
                if depth > 2 {
                    return Err(self.err("arrays nested too deep"));
                }
                let inner = self.u32()?;
                let n = self.len("array")?;
                let mut v = Vec::with_capacity(n.min(1 << 20));
                for _ in 0..n {
                    v.push(self.value(inner, depth + 1)?);
                }
                GgufValue::Array(v)
            }
            10 => GgufValue::U64(self.u64()?),
            11 => GgufValue::I64(self.u64()? as i64),
            12 => GgufValue::F64(f64::from_bits(self.u64()?)),
            other => return Err(self.err(format!("unknown metadata value type {other}"))),
        })
    }
}

impl GgufFile {
    /// Opens and parses the header, metadata and tensor infos.
    pub fn open(path: &Path) -> Result<Self> {
        Self::parse(path, FileBytes::map(path)?)
    }

    /// Parses a GGUF file already in memory; `path` only names it in errors.
    pub fn from_bytes(path: &Path, bytes: Vec<u8>) -> Result<Self> {
        Self::parse(path, FileBytes::Owned(bytes))
    }

    fn parse(path: &Path, mmap: FileBytes) -> Result<Self> {
        let mut c = Cursor {
            buf: &mmap,
            pos: 0,
            path,
        };
        let magic = c.take(4).map_err(|_| Error::Gguf {
            path: path.to_path_buf(),
            msg: "file is shorter than the 4-byte magic".into(),
        })?;
        if magic != b"GGUF" {
            return Err(Error::Gguf {
                path: path.to_path_buf(),
                msg: format!(
                    "bad magic {:?} (expected \"GGUF\"): not a GGUF file",
                    String::from_utf8_lossy(magic)
                ),
            });
        }
        let version = c.u32()?;
        if !(2..=3).contains(&version) {
            return Err(c.err(format!(
                "unsupported GGUF version {version} (2 and 3 are read)"
            )));
        }
        let n_tensors = c.len("tensor count")?;
        let n_kv = c.len("metadata count")?;
        let mut metadata = BTreeMap::new();
        for _ in 0..n_kv {
            let key = c.string()?;
            let ty = c.u32()?;
            let v = c.value(ty, 0)?;
            metadata.insert(key, v);
        }
        let mut tensors = Vec::with_capacity(n_tensors);
        for _ in 0..n_tensors {
            let name = c.string()?;
            let nd = c.u32()? as usize;
            if nd > 4 {
                return Err(c.err(format!("tensor `{name}` has {nd} dimensions (max 4)")));
            }
            let mut dims = Vec::with_capacity(nd);
            for _ in 0..nd {
                dims.push(c.len("dimension")?);
            }
            let ggml_type = GgmlType::from_id(c.u32()?);
            let offset = c.u64()? as usize;
            tensors.push(GgufTensorInfo {
                name,
                dims,
                ggml_type,
                offset,
            });
        }
        let align = metadata
            .get("general.alignment")
            .and_then(GgufValue::as_u64)
            .unwrap_or(32) as usize;
        if align == 0 {
            return Err(c.err("general.alignment is 0"));
        }
        let data_start = c.pos.div_ceil(align) * align;
        let f = GgufFile {
            path: path.to_path_buf(),
            mmap,
            version,
            metadata,
            tensors,
            data_start,
        };
        // Every tensor must lie inside the file (in checked arithmetic: dimensions and offsets
        // are the file's to choose, and their products and sums may not fit a usize).
        for t in &f.tensors {
            let numel = t.dims.iter().try_fold(1usize, |n, &d| n.checked_mul(d));
            let Some(numel) = numel else {
                return Err(Error::Gguf {
                    path: f.path.clone(),
                    msg: format!(
                        "tensor `{}` has dimensions {:?}: too many elements",
                        t.name, t.dims
                    ),
                });
            };
            if let Some((per, bytes)) = t.ggml_type.block() {
                let end = numel
                    .div_ceil(per)
                    .checked_mul(bytes)
                    .and_then(|size| size.checked_add(t.offset))
                    .and_then(|e| e.checked_add(f.data_start));
                if end.is_none_or(|e| e > f.mmap.len()) {
                    return Err(Error::Gguf {
                        path: f.path.clone(),
                        msg: format!(
                            "tensor `{}` extends past the end of the file (truncated?)",
                            t.name
                        ),
                    });
                }
            }
        }
        Ok(f)
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A metadata value.
    pub fn get(&self, key: &str) -> Option<&GgufValue> {
        self.metadata.get(key)
    }

    /// A tensor's header entry.
    pub fn info(&self, name: &str) -> Option<&GgufTensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// Dequantises a tensor to f32, shaped row-major (ggml dims reversed).
    pub fn tensor_f32(&self, name: &str) -> Result<HostTensor> {
        let info = self.info(name).ok_or_else(|| Error::MissingTensor {
            key: name.to_string(),
            location: self.path.display().to_string(),
        })?;
        let (per, bytes) = info.ggml_type.block().ok_or_else(|| Error::Gguf {
            path: self.path.clone(),
            msg: format!(
                "tensor `{name}` uses quantisation {}, which is not supported (F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K are)",
                info.ggml_type.name()
            ),
        })?;
        let n = info.numel();
        if n % per != 0 {
            return Err(Error::Gguf {
                path: self.path.clone(),
                msg: format!(
                    "tensor `{name}` has {n} elements, not a multiple of its block size {per}"
                ),
            });
        }
        let start = self.data_start + info.offset;
        let raw = &self.mmap[start..start + n / per * bytes];
        let data = dequantize(info.ggml_type, raw, n);
        Ok(HostTensor::new(info.shape(), data))
    }
}

fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

/// Dequantises `n` elements of `ty` from `raw`.
pub fn dequantize(ty: GgmlType, raw: &[u8], n: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(n);
    match ty {
        GgmlType::F32 => out.extend(
            raw.chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().expect("4"))),
        ),
        GgmlType::F16 => out.extend(
            raw.chunks_exact(2)
                .map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32()),
        ),
        GgmlType::Bf16 => out.extend(
            raw.chunks_exact(2)
                .map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32()),
        ),
        GgmlType::Q8_0 => {
            for b in raw.chunks_exact(34) {
                let d = f16_at(b, 0);
                out.extend(b[2..34].iter().map(|&q| d * (q as i8) as f32));
            }
        }
        GgmlType::Q4_0 => {
            for b in raw.chunks_exact(18) {
                let d = f16_at(b, 0);
                let qs = &b[2..18];
                out.extend(qs.iter().map(|&q| ((q & 0xF) as i32 - 8) as f32 * d));
                out.extend(qs.iter().map(|&q| ((q >> 4) as i32 - 8) as f32 * d));
            }
        }
        GgmlType::Q4_1 => {
            for b in raw.chunks_exact(20) {
                let (d, m) = (f16_at(b, 0), f16_at(b, 2));
                let qs = &b[4..20];
                out.extend(qs.iter().map(|&q| (q & 0xF) as f32 * d + m));
                out.extend(qs.iter().map(|&q| (q >> 4) as f32 * d + m));
            }
        }
        GgmlType::Q5_0 => {
            for b in raw.chunks_exact(22) {
                let d = f16_at(b, 0);
                let qh = u32::from_le_bytes(b[2..6].try_into().expect("4"));
                let qs = &b[6..22];
                let mut lo = [0f32; 16];
                let mut hi = [0f32; 16];
                for j in 0..16 {
                    let xh0 = ((qh >> j) << 4) & 0x10;
                    let xh1 = (qh >> (j + 12)) & 0x10;
                    lo[j] = (((qs[j] as u32 & 0xF) | xh0) as i32 - 16) as f32 * d;
                    hi[j] = (((qs[j] as u32 >> 4) | xh1) as i32 - 16) as f32 * d;
                }
                out.extend_from_slice(&lo);
                out.extend_from_slice(&hi);
            }
        }
        GgmlType::Q5_1 => {
            for b in raw.chunks_exact(24) {
                let (d, m) = (f16_at(b, 0), f16_at(b, 2));
                let qh = u32::from_le_bytes(b[4..8].try_into().expect("4"));
                let qs = &b[8..24];
                let mut lo = [0f32; 16];
                let mut hi = [0f32; 16];
                for j in 0..16 {
                    let xh0 = ((qh >> j) << 4) & 0x10;
                    let xh1 = (qh >> (j + 12)) & 0x10;
                    lo[j] = ((qs[j] as u32 & 0xF) | xh0) as f32 * d + m;
                    hi[j] = ((qs[j] as u32 >> 4) | xh1) as f32 * d + m;
                }
                out.extend_from_slice(&lo);
                out.extend_from_slice(&hi);
            }
        }
        GgmlType::Q4K => {
            for b in raw.chunks_exact(144) {
                let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
                let scales = &b[4..16];
                let qs = &b[16..144];
                for (j, q) in qs.chunks_exact(32).enumerate() {
                    let (sc1, m1) = scale_min_k4(2 * j, scales);
                    let (sc2, m2) = scale_min_k4(2 * j + 1, scales);
                    let (d1, m1) = (d * sc1 as f32, dmin * m1 as f32);
                    let (d2, m2) = (d * sc2 as f32, dmin * m2 as f32);
                    out.extend(q.iter().map(|&x| d1 * (x & 0xF) as f32 - m1));
                    out.extend(q.iter().map(|&x| d2 * (x >> 4) as f32 - m2));
                }
            }
        }
        GgmlType::Q5K => {
            for b in raw.chunks_exact(176) {
                let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
                let scales = &b[4..16];
                let qh = &b[16..48];
                let ql = &b[48..176];
                for (j, q) in ql.chunks_exact(32).enumerate() {
                    let (u1, u2) = (1u8 << (2 * j), 2u8 << (2 * j));
                    let (sc1, m1) = scale_min_k4(2 * j, scales);
                    let (sc2, m2) = scale_min_k4(2 * j + 1, scales);
                    let (d1, m1) = (d * sc1 as f32, dmin * m1 as f32);
                    let (d2, m2) = (d * sc2 as f32, dmin * m2 as f32);
                    for l in 0..32 {
                        let h = if qh[l] & u1 != 0 { 16 } else { 0 };
                        out.push(d1 * ((q[l] & 0xF) + h) as f32 - m1);
                    }
                    for l in 0..32 {
                        let h = if qh[l] & u2 != 0 { 16 } else { 0 };
                        out.push(d2 * ((q[l] >> 4) + h) as f32 - m2);
                    }
                }
            }
        }
        GgmlType::Q6K => {
            for b in raw.chunks_exact(210) {
                let ql_all = &b[0..128];
                let qh_all = &b[128..192];
                let sc_all = &b[192..208];
                let d = f16_at(b, 208);
                for n in 0..2 {
                    let ql = &ql_all[64 * n..];
                    let qh = &qh_all[32 * n..];
                    let sc = &sc_all[8 * n..];
                    let mut y = [0f32; 128];
                    for l in 0..32 {
                        let is = l / 16;
                        let q1 = ((ql[l] & 0xF) | ((qh[l] & 3) << 4)) as i32 - 32;
                        let q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
                        let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
                        let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
                        y[l] = d * (sc[is] as i8) as f32 * q1 as f32;
                        y[l + 32] = d * (sc[is + 2] as i8) as f32 * q2 as f32;
                        y[l + 64] = d * (sc[is + 4] as i8) as f32 * q3 as f32;
                        y[l + 96] = d * (sc[is + 6] as i8) as f32 * q4 as f32;
                    }
                    out.extend_from_slice(&y);
                }
            }
        }
        GgmlType::Other(_) => unreachable!("checked by the caller"),
    }
    out
}

/// The 6-bit scale and min of sub-block `j` packed in a K-quant block's 12 scale bytes.
fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// A tensor to write: its GGUF name, the values (shape outermost first, as in safetensors) and
/// the storage type (`F32`, `F16`, `Bf16` or `Q8_0`).
pub struct GgufTensorOut<'a> {
    pub name: String,
    pub tensor: &'a HostTensor,
    pub ty: GgmlType,
}

impl GgmlType {
    /// The type id in a GGUF file.
    pub fn id(self) -> u32 {
        match self {
            GgmlType::F32 => 0,
            GgmlType::F16 => 1,
            GgmlType::Q4_0 => 2,
            GgmlType::Q4_1 => 3,
            GgmlType::Q5_0 => 6,
            GgmlType::Q5_1 => 7,
            GgmlType::Q8_0 => 8,
            GgmlType::Q4K => 12,
            GgmlType::Q5K => 13,
            GgmlType::Q6K => 14,
            GgmlType::Bf16 => 30,
            GgmlType::Other(id) => id,
        }
    }
}

/// The bytes of `t` stored as `ty`. Q8_0 is ggml's reference quantiser: blocks of 32 along the
/// innermost dimension, `d = max|x| / 127` (f16), `q = round(x / d)`.
fn encode(t: &HostTensor, ty: GgmlType, name: &str) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    match ty {
        GgmlType::F32 => t
            .data
            .iter()
            .for_each(|v| out.extend_from_slice(&v.to_le_bytes())),
        GgmlType::F16 => t
            .data
            .iter()
            .for_each(|v| out.extend_from_slice(&f16::from_f32(*v).to_le_bytes())),
        GgmlType::Bf16 => t
            .data
            .iter()
            .for_each(|v| out.extend_from_slice(&bf16::from_f32(*v).to_le_bytes())),
        GgmlType::Q8_0 => {
            let inner = t.shape.last().copied().unwrap_or(1);
            if !inner.is_multiple_of(32) {
                return Err(Error::invalid(format!(
                    "tensor `{name}` has rows of {inner} values: Q8_0 needs a multiple of 32"
                )));
            }
            for block in t.data.chunks(32) {
                let amax = block.iter().fold(0f32, |m, v| m.max(v.abs()));
                let d = amax / 127.0;
                let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                out.extend_from_slice(&f16::from_f32(d).to_le_bytes());
                out.extend(block.iter().map(|v| ((v * id).round() as i8) as u8));
            }
        }
        other => {
            return Err(Error::invalid(format!(
                "tensor `{name}`: writing {other:?} is not supported (F32, F16, BF16, Q8_0)"
            )));
        }
    }
    Ok(out)
}

fn put_str(b: &mut Vec<u8>, s: &str) {
    b.extend_from_slice(&(s.len() as u64).to_le_bytes());
    b.extend_from_slice(s.as_bytes());
}

fn value_type(v: &GgufValue) -> u32 {
    match v {
        GgufValue::U8(_) => 0,
        GgufValue::I8(_) => 1,
        GgufValue::U16(_) => 2,
        GgufValue::I16(_) => 3,
        GgufValue::U32(_) => 4,
        GgufValue::I32(_) => 5,
        GgufValue::F32(_) => 6,
        GgufValue::Bool(_) => 7,
        GgufValue::String(_) => 8,
        GgufValue::Array(_) => 9,
        GgufValue::U64(_) => 10,
        GgufValue::I64(_) => 11,
        GgufValue::F64(_) => 12,
    }
}

fn put_value(b: &mut Vec<u8>, v: &GgufValue) {
    match v {
        GgufValue::U8(x) => b.push(*x),
        GgufValue::I8(x) => b.push(*x as u8),
        GgufValue::U16(x) => b.extend_from_slice(&x.to_le_bytes()),
        GgufValue::I16(x) => b.extend_from_slice(&x.to_le_bytes()),
        GgufValue::U32(x) => b.extend_from_slice(&x.to_le_bytes()),
        GgufValue::I32(x) => b.extend_from_slice(&x.to_le_bytes()),
        GgufValue::U64(x) => b.extend_from_slice(&x.to_le_bytes()),
        GgufValue::I64(x) => b.extend_from_slice(&x.to_le_bytes()),
        GgufValue::F32(x) => b.extend_from_slice(&x.to_le_bytes()),
        GgufValue::F64(x) => b.extend_from_slice(&x.to_le_bytes()),
        GgufValue::Bool(x) => b.push(*x as u8),
        GgufValue::String(s) => put_str(b, s),
        GgufValue::Array(a) => {
            let ty = a.first().map_or(4, value_type);
            b.extend_from_slice(&ty.to_le_bytes());
            b.extend_from_slice(&(a.len() as u64).to_le_bytes());
            for x in a {
                put_value(b, x);
            }
        }
    }
}

const ALIGNMENT: usize = 32;

/// Writes a GGUF v3 file atomically: metadata, tensor infos, then each tensor's data encoded
/// and written one at a time (never the whole model in one buffer).
pub fn write_gguf(
    path: &Path,
    metadata: &[(String, GgufValue)],
    tensors: &[GgufTensorOut],
) -> Result<()> {
    let infos: Vec<(&str, &[usize], GgmlType)> = tensors
        .iter()
        .map(|t| (t.name.as_str(), t.tensor.shape.as_slice(), t.ty))
        .collect();
    let head = gguf_head(metadata, &infos)?;
    let mut failure = None;
    crate::fsutil::write_atomic_with(path, |w| {
        use std::io::Write;
        w.write_all(&head)?;
        for t in tensors {
            write_tensor(w, t.tensor, t.ty, &t.name, &mut failure)?;
        }
        Ok(())
    })
    .map_err(|e| failure.take().unwrap_or(e))
}

/// A model's tensors made on demand, a group (a layer, say) at a time, for
/// [`write_gguf_groups`]: each group is made twice, once for the header's shapes and once to
/// write, so only one group's tensors are ever in memory.
pub trait TensorGroups {
    /// How many groups.
    fn groups(&self) -> usize;
    /// Group `i`'s tensors, by GGUF name, in file order.
    fn group(&self, i: usize) -> Result<Vec<(String, HostTensor)>>;
}

/// [`write_gguf`] over tensors made a group at a time; `ty` picks each tensor's storage type
/// (called once per tensor, in file order).
pub fn write_gguf_groups(
    path: &Path,
    metadata: &[(String, GgufValue)],
    groups: &dyn TensorGroups,
    mut ty: impl FnMut(&str, &HostTensor) -> GgmlType,
) -> Result<usize> {
    let mut infos: Vec<(String, Vec<usize>, GgmlType)> = Vec::new();
    for g in 0..groups.groups() {
        for (name, t) in groups.group(g)? {
            let kind = ty(&name, &t);
            infos.push((name, t.shape.clone(), kind));
        }
    }
    let views: Vec<(&str, &[usize], GgmlType)> = infos
        .iter()
        .map(|(n, s, t)| (n.as_str(), s.as_slice(), *t))
        .collect();
    let head = gguf_head(metadata, &views)?;
    let mut failure = None;
    crate::fsutil::write_atomic_with(path, |w| {
        use std::io::Write;
        w.write_all(&head)?;
        let mut k = 0;
        for g in 0..groups.groups() {
            let tensors = match groups.group(g) {
                Ok(t) => t,
                Err(e) => {
                    failure = Some(e);
                    return Err(std::io::Error::other("a tensor group failed"));
                }
            };
            for (name, t) in tensors {
                // The second making of a group must be the first's.
                if infos
                    .get(k)
                    .is_none_or(|(n, s, _)| *n != name || *s != t.shape)
                {
                    failure = Some(Error::invalid(format!(
                        "tensor `{name}` changed between the header and the data"
                    )));
                    return Err(std::io::Error::other("inconsistent tensor groups"));
                }
                write_tensor(w, &t, infos[k].2, &name, &mut failure)?;
                k += 1;
            }
        }
        Ok(())
    })
    .map_err(|e| failure.take().unwrap_or(e))?;
    Ok(infos.len())
}

/// The header: magic, version, counts, metadata and tensor infos, padded to the alignment.
fn gguf_head(
    metadata: &[(String, GgufValue)],
    tensors: &[(&str, &[usize], GgmlType)],
) -> Result<Vec<u8>> {
    let mut head: Vec<u8> = Vec::new();
    head.extend_from_slice(b"GGUF");
    head.extend_from_slice(&3u32.to_le_bytes());
    head.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
    head.extend_from_slice(&(metadata.len() as u64).to_le_bytes());
    for (k, v) in metadata {
        put_str(&mut head, k);
        head.extend_from_slice(&value_type(v).to_le_bytes());
        put_value(&mut head, v);
    }
    let mut offset = 0usize;
    for &(name, shape, ty) in tensors {
        let (per_block, bytes) = ty
            .block()
            .ok_or_else(|| Error::invalid(format!("tensor `{name}`: unsupported type {ty:?}")))?;
        put_str(&mut head, name);
        head.extend_from_slice(&(shape.len() as u32).to_le_bytes());
        for d in shape.iter().rev() {
            head.extend_from_slice(&(*d as u64).to_le_bytes());
        }
        head.extend_from_slice(&ty.id().to_le_bytes());
        head.extend_from_slice(&(offset as u64).to_le_bytes());
        let numel: usize = shape.iter().product();
        offset += (numel / per_block * bytes).div_ceil(ALIGNMENT) * ALIGNMENT;
    }
    while !head.len().is_multiple_of(ALIGNMENT) {
        head.push(0);
    }
    Ok(head)
}

/// Encodes one tensor and writes it with its alignment padding; an encoding error is kept in
/// `failure` (it names the tensor) and reported as an I/O error to stop the write.
fn write_tensor(
    w: &mut impl std::io::Write,
    t: &HostTensor,
    ty: GgmlType,
    name: &str,
    failure: &mut Option<Error>,
) -> std::io::Result<()> {
    let bytes = match encode(t, ty, name) {
        Ok(b) => b,
        Err(e) => {
            *failure = Some(e);
            return Err(std::io::Error::other("encoding failed"));
        }
    };
    w.write_all(&bytes)?;
    let pad = bytes.len().div_ceil(ALIGNMENT) * ALIGNMENT - bytes.len();
    w.write_all(&vec![0u8; pad])
}

/// Writes a minimal GGUF v3 file with F32 tensors, for tests of importers.
pub fn write_f32_gguf(
    path: &Path,
    metadata: &[(&str, GgufValue)],
    tensors: &[(&str, &HostTensor)],
) -> Result<()> {
    let metadata: Vec<(String, GgufValue)> = metadata
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect();
    let tensors: Vec<GgufTensorOut> = tensors
        .iter()
        .map(|(n, t)| GgufTensorOut {
            name: n.to_string(),
            tensor: t,
            ty: GgmlType::F32,
        })
        .collect();
    write_gguf(path, &metadata, &tensors)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_tensors_read_back_within_their_types_rounding() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.gguf");
        let vals: Vec<f32> = (0..128)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0)
            .collect();
        let t = HostTensor::new(vec![2, 64], vals.clone());
        let types = [GgmlType::F32, GgmlType::F16, GgmlType::Bf16, GgmlType::Q8_0];
        let tensors: Vec<GgufTensorOut> = types
            .iter()
            .map(|&ty| GgufTensorOut {
                name: format!("{ty:?}"),
                tensor: &t,
                ty,
            })
            .collect();
        let meta = vec![("general.name".to_string(), GgufValue::String("t".into()))];
        write_gguf(&p, &meta, &tensors).unwrap();
        let g = GgufFile::open(&p).unwrap();
        assert_eq!(g.get("general.name").and_then(GgufValue::as_str), Some("t"));
        for ty in types {
            let back = g.tensor_f32(&format!("{ty:?}")).unwrap();
            assert_eq!(back.shape, [2, 64]);
            for (b, block) in back.data.chunks(32).zip(vals.chunks(32)) {
                let amax = block.iter().fold(0f32, |m, v| m.max(v.abs()));
                for (x, v) in b.iter().zip(block) {
                    let bound = match ty {
                        GgmlType::F32 => 0.0,
                        GgmlType::F16 => v.abs() / 2048.0,
                        GgmlType::Bf16 => v.abs() / 256.0,
                        // Half a quantisation step, plus the f16 rounding of the scale.
                        _ => amax / 127.0 * 0.5 + amax / 2048.0,
                    };
                    assert!((x - v).abs() <= bound, "{ty:?}: {x} vs {v}");
                }
            }
        }
        let odd = HostTensor::new(vec![1, 20], vec![1.0; 20]);
        let e = write_gguf(
            &p,
            &meta,
            &[GgufTensorOut {
                name: "odd".into(),
                tensor: &odd,
                ty: GgmlType::Q8_0,
            }],
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("`odd`") && e.contains("multiple of 32"), "{e}");
    }

    #[test]
    fn q8_0_and_q4_1_blocks_dequantise_by_the_reference_formulas() {
        // Q8_0: d = 0.5, q = [-2, 4, 0...]
        let mut b = f16::from_f32(0.5).to_le_bytes().to_vec();
        let mut qs = [0u8; 32];
        qs[0] = (-2i8) as u8;
        qs[1] = 4;
        b.extend_from_slice(&qs);
        let v = dequantize(GgmlType::Q8_0, &b, 32);
        assert_eq!(&v[..3], &[-1.0, 2.0, 0.0]);
        // Q4_1: d = 2, m = -1; byte 0 = 0x31 -> low nibble 1 (element 0), high nibble 3 (element 16).
        let mut b = f16::from_f32(2.0).to_le_bytes().to_vec();
        b.extend_from_slice(&f16::from_f32(-1.0).to_le_bytes());
        let mut qs = [0u8; 16];
        qs[0] = 0x31;
        b.extend_from_slice(&qs);
        let v = dequantize(GgmlType::Q4_1, &b, 32);
        assert_eq!(v[0], 1.0);
        assert_eq!(v[16], 5.0);
        assert_eq!(v[1], -1.0);
    }

    #[test]
    fn bad_magic_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.gguf");
        std::fs::write(&p, b"GGMLxxxxxxxxxxxxxxxxxxxxxxxx").unwrap();
        let e = GgufFile::open(&p).err().unwrap().to_string();
        assert!(e.contains("x.gguf") && e.contains("bad magic"), "{e}");
    }

    #[test]
    fn writes_and_reads_back_f32_tensors_and_metadata() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.gguf");
        let t = HostTensor::new(vec![2, 3], vec![1., 2., 3., 4., 5., 6.]);
        write_f32_gguf(
            &p,
            &[
                ("general.architecture", GgufValue::String("llama".into())),
                ("llama.block_count", GgufValue::U32(1)),
            ],
            &[("w", &t)],
        )
        .unwrap();
        let g = GgufFile::open(&p).unwrap();
        assert_eq!(
            g.get("llama.block_count").and_then(GgufValue::as_u64),
            Some(1)
        );
        assert_eq!(g.info("w").unwrap().dims, vec![3, 2]);
        assert_eq!(g.tensor_f32("w").unwrap(), t);
    }

    #[test]
    fn unsupported_quant_type_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("q.gguf");
        let t = HostTensor::new(vec![256], vec![0.0; 256]);
        write_f32_gguf(&p, &[], &[("w", &t)]).unwrap();
        // Patch the type id (after name, n_dims, one dim) to 10 = Q2_K.
        let mut bytes = std::fs::read(&p).unwrap();
        let type_pos = 4 + 4 + 8 + 8 + (8 + 1) + 4 + 8;
        bytes[type_pos..type_pos + 4].copy_from_slice(&10u32.to_le_bytes());
        std::fs::write(&p, &bytes).unwrap();
        let g = GgufFile::open(&p).unwrap();
        let e = g.tensor_f32("w").unwrap_err().to_string();
        assert!(e.contains("Q2_K") && e.contains("not supported"), "{e}");
    }
}

#[cfg(test)]
mod reference_tests {
    use super::*;

    /// `fixtures/gguf/quants.gguf` holds random blocks of every supported quantised type and
    /// their dequantisation by gguf-py (llama.cpp's Python reference), made by
    /// `xtask/scripts/make_gguf_quant_fixture.py`.
    #[test]
    fn every_quant_type_matches_gguf_py() {
        let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/gguf/quants.gguf");
        let g = GgufFile::open(&p).unwrap();
        let mut checked = 0;
        for name in [
            "q4_0", "q4_1", "q5_0", "q5_1", "q8_0", "q4_k", "q5_k", "q6_k",
        ] {
            let got = g.tensor_f32(name).unwrap();
            let want = g.tensor_f32(&format!("{name}.expected")).unwrap();
            assert_eq!(got.shape, want.shape, "{name}");
            for (i, (a, b)) in got.data.iter().zip(&want.data).enumerate() {
                assert!(
                    (a - b).abs() <= 1e-6 * b.abs().max(1.0),
                    "{name}[{i}]: {a} vs {b}"
                );
            }
            checked += 1;
        }
        assert_eq!(checked, 8);
    }
}
