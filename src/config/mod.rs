//! vit.conf: FreeBSD ctl.conf(5) syntax with VMware's additions.
//!
//! [`parse`] turns text into the typed [`Config`] (stopping at the first syntax error),
//! [`verify()`] reports every semantic error, [`load`] does both, and [`print()`] writes the canonical
//! text that parses back to an equal model.
mod lexer;
pub mod model;
mod parser;
mod printer;
mod verify;

pub use model::*;
pub use printer::{is_printable_value, print};
pub use verify::{MAX_ALIAS_BYTES, MAX_LUN_ID, MAX_TARGET_PORTS};

/// The largest vit.conf accepted, in bytes. It bounds every allocation the parser makes.
pub const MAX_CONFIG_BYTES: usize = 16 << 20;

/// An error in a vit.conf, with the file, 1-based line and column (in characters) it refers to.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{line}:{col}: {msg}")]
pub struct ConfigError {
    pub file: String,
    pub line: u32,
    pub col: u32,
    pub msg: String,
}

impl ConfigError {
    /// An error at `pos` in `file`.
    pub fn at(file: &str, pos: Pos, msg: impl Into<String>) -> Self {
        ConfigError {
            file: file.to_string(),
            line: pos.line,
            col: pos.col,
            msg: msg.into(),
        }
    }
}

/// vit.conf bytes as text; the error names the line and column of the first byte that is not
/// UTF-8. `file` names the text in errors.
pub fn decode(bytes: Vec<u8>, file: &str) -> Result<String, ConfigError> {
    String::from_utf8(bytes).map_err(|e| {
        let bytes = e.as_bytes();
        let valid = e.utf8_error().valid_up_to();
        let before = std::str::from_utf8(&bytes[..valid]).unwrap_or_default();
        let bad = bytes.get(valid).copied().unwrap_or_default();
        ConfigError::at(
            file,
            lexer::end_pos(before),
            format!("byte 0x{bad:02x} is not UTF-8 (vit.conf is UTF-8 text)"),
        )
    })
}

/// Parses vit.conf text; the error is the first syntax error. `file` names the text in errors.
pub fn parse(text: &str, file: &str) -> Result<Config, ConfigError> {
    parser::parse(text, file)
}

/// Checks a parsed (or built) configuration: every semantic error, in file order.
pub fn verify(cfg: &Config, file: &str) -> Vec<ConfigError> {
    verify::verify(cfg, file)
}

/// What a valid configuration says that it should not (ctld accepts it too), in file order: for
/// vitd to log at start. See `verify::warnings`.
pub fn warnings(cfg: &Config, file: &str) -> Vec<ConfigError> {
    verify::warnings(cfg, file)
}

/// Parses then verifies: the configuration, or the syntax error or every semantic error.
pub fn load(text: &str, file: &str) -> Result<Config, Vec<ConfigError>> {
    let cfg = parse(text, file).map_err(|e| vec![e])?;
    let errors = verify(&cfg, file);
    if errors.is_empty() {
        Ok(cfg)
    } else {
        Err(errors)
    }
}
