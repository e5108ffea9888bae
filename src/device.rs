//! Where models run: the `--device` / `device = "..."` value every command and configuration takes.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// A device as a user names it: `auto` (the first CUDA device when there is one, else the CPU), `cpu`, `cuda`
/// (device 0) or `cuda:N`.
///
/// ```
/// use flyt::DeviceSpec;
/// let d: DeviceSpec = "cuda:1".parse().unwrap();
/// assert_eq!(d, DeviceSpec::Cuda(1));
/// assert_eq!(d.to_string(), "cuda:1");
/// assert_eq!("cpu".parse::<DeviceSpec>().unwrap().resolve().unwrap(), tch::Device::Cpu);
/// assert!("gpu".parse::<DeviceSpec>().unwrap_err().to_string().contains("auto, cpu, cuda or cuda:N"));
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum DeviceSpec {
    /// CUDA device 0 when CUDA is available, else the CPU.
    #[default]
    Auto,
    /// The CPU.
    Cpu,
    /// A CUDA device by index.
    Cuda(usize),
}

impl DeviceSpec {
    /// The libtorch device. Loads libtorch's CUDA backend first (a no-op on CPU-only machines), so that `auto`
    /// can see a GPU; a CUDA device asked for by name on a machine without CUDA is an error saying so.
    pub fn resolve(self) -> Result<tch::Device> {
        crate::init_torch_runtime();
        match self {
            DeviceSpec::Cpu => Ok(tch::Device::Cpu),
            DeviceSpec::Auto => Ok(tch::Device::cuda_if_available()),
            DeviceSpec::Cuda(n) => {
                if !tch::Cuda::is_available() {
                    return Err(Error::Config(format!("device {self} asked for, but CUDA is not available here")));
                }
                Ok(tch::Device::Cuda(n))
            }
        }
    }
}

impl FromStr for DeviceSpec {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "auto" => Ok(DeviceSpec::Auto),
            "cpu" => Ok(DeviceSpec::Cpu),
            "cuda" => Ok(DeviceSpec::Cuda(0)),
            _ => s
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(DeviceSpec::Cuda)
                .ok_or_else(|| Error::Config(format!("device must be auto, cpu, cuda or cuda:N, got {s:?}"))),
        }
    }
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceSpec::Auto => f.write_str("auto"),
            DeviceSpec::Cpu => f.write_str("cpu"),
            DeviceSpec::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

impl TryFrom<String> for DeviceSpec {
    type Error = Error;

    fn try_from(s: String) -> Result<Self> {
        s.parse()
    }
}

impl From<DeviceSpec> for String {
    fn from(d: DeviceSpec) -> String {
        d.to_string()
    }
}
