//! Klawd Gateway's hot path: pure Rust modules, with the PyO3 shell in `py.rs`.

#[cfg(feature = "python")]
mod py;

/// Version of the core crate, exported to Python as `gateway._core.__version__`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
