//! Serving engines as measured runtimes: the deployment names one (`deployment.engine`), cost
//! models time library entries in it, and the final evaluation measures parent, child and
//! baselines in it. `burn` (our own runtime) is built in; `llamacpp` comes from the Llama
//! plugin when it is built with llama.cpp.

use burn::module::Module;
use burn::tensor::Device;

use crate::deploy::DeploymentProfile;
use crate::error::{Error, Result};
use crate::eval::speed::Served;
use crate::nn::Decoder;
use crate::spec::ModelSpec;
use crate::weights::WeightSource;
use puzzle_types::engine::Capabilities;
use puzzle_types::kinds::EngineKind;
use puzzle_types::registry::Registry;

/// The contract of an engine: load a model (a spec and its weights) as the deployment serves it
/// (its weight and KV dtypes), ready to time requests. Loading may take long (an engine may
/// convert the weights); requests are what is timed.
pub trait Engine: Send + Sync + 'static {
    /// Which engine this is (its registry name is the kind's name).
    fn kind(&self) -> EngineKind;
    /// A line for reports and provenance: version, threads, device.
    fn describe(&self, device: &Device) -> String;
    /// Loads `spec` with `weights` for serving under `deploy`.
    fn load(
        &self,
        spec: &ModelSpec,
        weights: &dyn WeightSource,
        deploy: &DeploymentProfile,
        device: &Device,
    ) -> Result<Box<dyn Served>>;
    /// What it can run.
    fn capabilities(&self) -> Capabilities {
        self.kind().capabilities()
    }
}

/// `spec` loaded in `engine` for timing, through the simulated clock when it is on
/// ([`crate::eval::speed::SIMULATED_CLOCK_ENV`]): every caller that times goes through here.
pub fn load_timed(
    engine: &dyn Engine,
    spec: &ModelSpec,
    weights: &dyn WeightSource,
    deploy: &DeploymentProfile,
    device: &Device,
) -> Result<Box<dyn Served>> {
    Ok(crate::eval::speed::clocked(
        engine.load(spec, weights, deploy, device)?,
        spec,
    ))
}

/// The line reports and provenance give `engine`; it says when the times are simulated, so a
/// simulated run cannot pass for a measured one.
pub fn described(engine: &dyn Engine, device: &Device) -> String {
    let d = engine.describe(device);
    if crate::eval::speed::simulated_clock() {
        format!(
            "{d}; times SIMULATED ({}=1), not measured",
            crate::eval::speed::SIMULATED_CLOCK_ENV
        )
    } else {
        d
    }
}

/// An engine registered by a static plugin.
pub struct EngineRegistration {
    pub engine: &'static dyn Engine,
    pub provider: &'static str,
    pub description: &'static str,
}

inventory::collect!(EngineRegistration);

impl puzzle_types::registry::Named for dyn Engine {
    fn name(&self) -> &str {
        self.kind().as_str()
    }
}

/// The statically linked engines, as a registry.
pub fn static_engines() -> Registry<dyn Engine> {
    let mut r = Registry::new("engine");
    for e in inventory::iter::<EngineRegistration> {
        r.add(e.engine, e.provider, e.description)
            .expect("two static engines share a name");
    }
    r
}

/// The engine `kind` from `engines`, or an error that says what this build can measure.
pub fn engine_for(engines: &Registry<dyn Engine>, kind: EngineKind) -> Result<&'static dyn Engine> {
    engines.get(kind.as_str()).map_err(|_| {
        Error::invalid(format!(
            "deployment.engine = \"{kind}\": this build cannot run {kind}, so it cannot measure speed there (it can: {}); \
             {}",
            engines.known(),
            match kind {
                EngineKind::LlamaCpp => {
                    "build puzzle with its default `llamacpp` feature (needs cmake and a C++ compiler)"
                }
                _ => "choose one of those engines, or an `analytic` / `roofline` cost model and measure on the serving machine",
            }
        ))
    })
}

/// Our own burn runtime, on the program's device.
pub struct BurnEngine;

impl Engine for BurnEngine {
    fn kind(&self) -> EngineKind {
        EngineKind::Burn
    }

    fn describe(&self, device: &Device) -> String {
        format!("burn 0.22.1 on {}", crate::device::describe(device))
    }

    fn load(
        &self,
        spec: &ModelSpec,
        weights: &dyn WeightSource,
        _deploy: &DeploymentProfile,
        device: &Device,
    ) -> Result<Box<dyn Served>> {
        Ok(Box::new(Decoder::load(spec, weights, device)?.valid()))
    }
}

inventory::submit! {
    EngineRegistration {
        engine: &BurnEngine,
        provider: "puzzle-core",
        description: "puzzle's own burn runtime (f32 compute on the program's device)",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_engine_this_build_lacks_is_named_with_what_it_has() {
        let mut r: Registry<dyn Engine> = Registry::new("engine");
        r.add(&BurnEngine, "test", "burn").unwrap();
        let e = engine_for(&r, EngineKind::Vllm).err().unwrap().to_string();
        assert!(e.contains("deployment.engine = \"vllm\""), "{e}");
        assert!(e.contains("(it can: burn)"), "{e}");
        assert!(engine_for(&r, EngineKind::Burn).is_ok());
    }
}
