//! AdamW over any burn module, with global-norm gradient clipping and a state that is saved by
//! parameter path (so a rebuilt module resumes exactly, whatever its parameter ids).
//!
//! Our own rather than burn's `AdamW` because resuming must be bit-exact after the module is
//! rebuilt from safetensors (new `ParamId`s), and the state has to live in our checkpoint files.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::tensor::{Device, Gradients, Tensor};

use crate::error::{Error, Result};
use crate::weights::{HostTensor, SafetensorsWeights, StoreDtype, WeightSource, write_safetensors};

/// AdamW hyper-parameters.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdamWConfig {
    #[serde(default = "d_beta1")]
    pub beta1: f64,
    #[serde(default = "d_beta2")]
    pub beta2: f64,
    #[serde(default = "d_eps")]
    pub eps: f64,
    /// Decoupled weight decay, applied to matrices only (not norms).
    #[serde(default = "d_wd")]
    pub weight_decay: f64,
    /// Clip the global gradient norm to this value (`None`: no clipping).
    #[serde(default = "d_clip")]
    pub grad_clip: Option<f64>,
}

fn d_beta1() -> f64 {
    0.9
}
fn d_beta2() -> f64 {
    0.95
}
fn d_eps() -> f64 {
    1e-8
}
fn d_wd() -> f64 {
    0.1
}
fn d_clip() -> Option<f64> {
    Some(1.0)
}

impl Default for AdamWConfig {
    fn default() -> Self {
        AdamWConfig {
            beta1: d_beta1(),
            beta2: d_beta2(),
            eps: d_eps(),
            weight_decay: d_wd(),
            grad_clip: d_clip(),
        }
    }
}

/// The optimiser with its moments, keyed by module path.
pub struct AdamW {
    pub cfg: AdamWConfig,
    /// Steps taken (bias correction uses it).
    pub t: u64,
    moments: HashMap<String, (Tensor<1>, Tensor<1>)>,
}

/// What a step saw.
#[derive(Clone, Copy, Debug)]
pub struct StepStats {
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
}

struct PathTracker(Vec<String>);

impl PathTracker {
    fn key(&self) -> String {
        self.0.join(".")
    }
}

struct NormVisitor<'a> {
    grads: &'a Gradients,
    sum: Option<Tensor<1>>,
}

impl ModuleVisitor for NormVisitor<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if let Some(g) = param.val().grad(self.grads) {
            let s = g.square().sum();
            self.sum = Some(match self.sum.take() {
                Some(acc) => acc + s,
                None => s,
            });
        }
    }
}

struct UpdateMapper<'a> {
    opt: &'a mut AdamW,
    grads: &'a Gradients,
    lr: f64,
    scale: f64,
    path: PathTracker,
}

impl ModuleMapper for UpdateMapper<'_> {
    fn enter_module(&mut self, name: &str, _container: &str) {
        self.path.0.push(name.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container: &str) {
        self.path.0.pop();
    }

    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let (id, tensor, mapper) = param.consume();
        let Some(grad) = tensor.grad(self.grads) else {
            return Param::from_mapped_value(id, tensor, mapper);
        };
        let require_grad = tensor.is_require_grad();
        let shape = tensor.dims();
        let n: usize = shape.iter().product();
        let c = &self.opt.cfg;
        let t = self.opt.t as i32;
        let g = grad.reshape([n]).mul_scalar(self.scale);
        let key = self.path.key();
        let (m, v) = match self.opt.moments.remove(&key) {
            Some((m, v)) => (
                m.mul_scalar(c.beta1) + g.clone().mul_scalar(1.0 - c.beta1),
                v.mul_scalar(c.beta2) + g.square().mul_scalar(1.0 - c.beta2),
            ),
            None => (
                g.clone().mul_scalar(1.0 - c.beta1),
                g.square().mul_scalar(1.0 - c.beta2),
            ),
        };
        let bc1 = 1.0 - c.beta1.powi(t);
        let bc2 = 1.0 - c.beta2.powi(t);
        let update =
            m.clone().div_scalar(bc1) / (v.clone().div_scalar(bc2).sqrt().add_scalar(c.eps));
        let p = tensor.inner().reshape([n]);
        let decay = if D >= 2 {
            self.lr * c.weight_decay
        } else {
            0.0
        };
        let p = p.mul_scalar(1.0 - decay) - update.mul_scalar(self.lr);
        self.opt.moments.insert(key, (m, v));
        let mut p = Tensor::from_inner(p.reshape(shape));
        if require_grad {
            p = p.require_grad();
        }
        Param::from_mapped_value(id, p, mapper)
    }
}

impl AdamW {
    /// A fresh optimiser.
    pub fn new(cfg: AdamWConfig) -> Self {
        AdamW {
            cfg,
            t: 0,
            moments: HashMap::new(),
        }
    }

    /// One update of every parameter that has a gradient.
    pub fn step<M: Module>(&mut self, module: M, grads: &Gradients, lr: f64) -> (M, StepStats) {
        self.t += 1;
        let mut nv = NormVisitor { grads, sum: None };
        module.visit(&mut nv);
        let grad_norm = nv
            .sum
            .map(|s| (s.into_scalar::<f32>() as f64).sqrt())
            .unwrap_or(0.0);
        let scale = match self.cfg.grad_clip {
            Some(max) if grad_norm > max => max / grad_norm,
            _ => 1.0,
        };
        let mut mapper = UpdateMapper {
            opt: self,
            grads,
            lr,
            scale,
            path: PathTracker(vec![]),
        };
        let module = module.map(&mut mapper);
        (module, StepStats { grad_norm })
    }

    /// Saves the moments (by path) and the step count.
    pub fn save(&self, path: &Path) -> Result<()> {
        let mut tensors: BTreeMap<String, HostTensor> = BTreeMap::new();
        for (k, (m, v)) in &self.moments {
            tensors.insert(format!("m.{k}"), HostTensor::from_tensor(m));
            tensors.insert(format!("v.{k}"), HostTensor::from_tensor(v));
        }
        let meta = HashMap::from([("t".to_string(), self.t.to_string())]);
        write_safetensors(
            path,
            tensors.iter().map(|(k, v)| (k.as_str(), v)),
            StoreDtype::F32,
            Some(meta),
        )
    }

    /// Restores moments and step count saved by [`AdamW::save`].
    pub fn load(cfg: AdamWConfig, path: &Path, device: &Device) -> Result<Self> {
        let w = SafetensorsWeights::open(path)?;
        let t = w
            .file_metadata()
            .get("t")
            .and_then(|t| t.parse().ok())
            .ok_or_else(|| Error::config(path, "optimizer state has no step count `t`"))?;
        let mut moments = HashMap::new();
        for name in w.names() {
            if let Some(k) = name.strip_prefix("m.") {
                let m = w.read(&name)?.to_tensor::<1>(device);
                let v = w.read(&format!("v.{k}"))?.to_tensor::<1>(device);
                moments.insert(k.to_string(), (m, v));
            }
        }
        Ok(AdamW { cfg, t, moments })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::TensorData;

    #[derive(Module, Debug)]
    struct Quad {
        w: Param<Tensor<2>>,
    }

    #[test]
    fn adamw_minimises_a_quadratic_and_resumes_exactly() {
        let device = Device::flex().autodiff();
        let make = || Quad {
            w: Param::from_tensor(Tensor::from_data(
                TensorData::new(vec![3.0f32, -2.0], [1, 2]),
                &device,
            )),
        };
        let target = Tensor::<2>::from_data(TensorData::new(vec![1.0f32, 1.0], [1, 2]), &device);
        let cfg = AdamWConfig {
            weight_decay: 0.0,
            ..Default::default()
        };
        let run = |q: Quad, opt: &mut AdamW, steps: usize| {
            let mut q = q;
            for _ in 0..steps {
                let loss = (q.w.val() - target.clone()).square().sum();
                let g = loss.backward();
                q = opt.step(q, &g, 0.1).0;
            }
            q
        };
        let mut opt = AdamW::new(cfg.clone());
        let q = run(make(), &mut opt, 200);
        let w: Vec<f32> = q.w.val().inner().try_into_vec_as::<f32>().unwrap();
        assert!(
            (w[0] - 1.0).abs() < 0.05 && (w[1] - 1.0).abs() < 0.05,
            "{w:?}"
        );
        // 10 steps, save, reload, 10 steps == 20 steps.
        let mut a = AdamW::new(cfg.clone());
        let qa = run(make(), &mut a, 20);
        let mut b = AdamW::new(cfg.clone());
        let qb = run(make(), &mut b, 10);
        let dir = tempfile::tempdir().unwrap();
        b.save(&dir.path().join("opt.safetensors")).unwrap();
        let wb: Vec<f32> = qb.w.val().inner().try_into_vec_as::<f32>().unwrap();
        let rebuilt = Quad {
            w: Param::from_tensor(Tensor::from_data(TensorData::new(wb, [1, 2]), &device)),
        };
        let mut b2 =
            AdamW::load(cfg, &dir.path().join("opt.safetensors"), &Device::flex()).unwrap();
        let qb = run(rebuilt, &mut b2, 10);
        let x: Vec<f32> = qa.w.val().inner().try_into_vec_as::<f32>().unwrap();
        let y: Vec<f32> = qb.w.val().inner().try_into_vec_as::<f32>().unwrap();
        assert_eq!(x, y);
    }
}
