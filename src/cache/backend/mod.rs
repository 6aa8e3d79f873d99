//! The transport seam under the publisher (being written): where the cache lives.

mod url;

pub use url::{CacheUrl, CacheUrlError, SftpTarget};
