//! The one error type of the SDK.

use core::fmt::{self, Debug, Display};

use roam_abi::ErrorCode;

/// An error a query returns, or that a host call raised: an optional [`ErrorCode`] and a message.
///
/// `Display` prints both: `denied: the module may not open table:stock` for a host error, the
/// bare message for an error raised in the module.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Error {
    /// Why the host refused a call, for callers that handle some refusals (`NotFound`, say);
    /// `None` for errors raised in the module, which have no host code.
    code: Option<ErrorCode>,
    /// What happened, for a person to read.
    message: String,
}

/// A [`Result`](core::result::Result) whose error defaults to the SDK's [`Error`].
pub type Result<T, E = Error> = core::result::Result<T, E>;

impl Error {
    /// An error with a message and no code, for a query to return.
    pub fn msg(m: impl Display) -> Self {
        Self { code: None, message: m.to_string() }
    }

    /// An error a host call returned, with the host's explanation of it.
    pub(crate) fn host(code: Option<ErrorCode>, message: String) -> Self {
        Self { code, message }
    }

    /// Why the host refused the call, or `None` for an error raised in the module.
    pub fn code(&self) -> Option<ErrorCode> {
        self.code
    }

    /// The message, without the code.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// Says where the error happened: `prefix: message`, keeping the code.
    pub(crate) fn context(mut self, prefix: impl Display) -> Self {
        self.message = format!("{prefix}: {}", self.message);
        self
    }
}

impl Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.code {
            Some(code) => write!(f, "{}: {}", code.describe(), self.message),
            None => f.write_str(&self.message),
        }
    }
}

impl std::error::Error for Error {}

/// A value that did not decode from CBOR: the input, a row, or a batch of rows.
impl<T: Debug> From<ciborium::de::Error<T>> for Error {
    fn from(err: ciborium::de::Error<T>) -> Self {
        use ciborium::de::Error as De;
        Self::msg(match err {
            // Reading from a byte slice fails only when it ends too soon.
            De::Io(_) => "the CBOR data ends too soon".to_owned(),
            De::Syntax(offset) => format!("malformed CBOR at byte {offset}"),
            // serde's own message ("invalid type: string \"x\", expected u32") says it all; the
            // offset would mean little to the reader.
            De::Semantic(_, message) => message,
            De::RecursionLimitExceeded => "the CBOR data is nested too deeply".to_owned(),
        })
    }
}

/// A value that did not encode as CBOR: the parameters of a query, or a query's output.
impl<T: Debug> From<ciborium::ser::Error<T>> for Error {
    fn from(err: ciborium::ser::Error<T>) -> Self {
        use ciborium::ser::Error as Ser;
        Self::msg(match err {
            Ser::Io(err) => format!("could not write CBOR: {err:?}"),
            Ser::Value(message) => message,
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // A failing unwrap is a failing test.
mod tests {
    use super::*;

    #[test]
    fn display_shows_the_code_and_the_message() {
        let err = Error::host(Some(ErrorCode::Denied), "no capability table:stock".into());
        assert_eq!(err.to_string(), "denied: no capability table:stock");
        assert_eq!(err.message(), "no capability table:stock");
        assert_eq!(err.code(), Some(ErrorCode::Denied));

        let err = Error::msg("region is empty");
        assert_eq!(err.to_string(), "region is empty");
        assert_eq!(err.code(), None);
    }

    #[test]
    fn context_goes_before_the_message() {
        let err = Error::msg("invalid type: null, expected a string").context("row 3");
        assert_eq!(err.to_string(), "row 3: invalid type: null, expected a string");
    }
}
