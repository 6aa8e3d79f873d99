//! Where the cache lives: `sftp://[user@]host[:port]/abs/path` or `file:///abs/path`, parsed
//! once at the border into a [`CacheUrl`]. Nothing here touches the network.

use std::fmt;
use std::path::{Component, Path, PathBuf};
use std::str::FromStr;

/// A parsed cache location.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CacheUrl {
    /// A directory on a host reached over SSH/SFTP.
    Sftp(SftpTarget),
    /// A directory on this machine.
    File { root: PathBuf },
}

/// `sftp://[user@]host[:port]/abs/path`. `user` and `port` stay `None` when the URL does not
/// name them, so that `~/.ssh/config` (`User`, `Port`, `HostName`) decides, as for plain `ssh`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SftpTarget {
    pub user: Option<String>,
    /// A host name, an address (IPv6 without brackets) or an alias from `~/.ssh/config`.
    pub host: String,
    pub port: Option<u16>,
    /// The cache directory on the remote host (absolute, normalised, no trailing slash).
    pub root: PathBuf,
}

/// A cache URL that could not be parsed: the URL, the part that is wrong, and why.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid cache url `{url}`: {problem}; expected e.g. \
     `sftp://farm@cache.example.org:2222/srv/nix-cache` or `file:///var/lib/nix-cache`"
)]
pub struct CacheUrlError {
    pub url: String,
    pub problem: String,
}

impl FromStr for CacheUrl {
    type Err = CacheUrlError;

    fn from_str(url: &str) -> Result<Self, Self::Err> {
        let bad = |problem: String| CacheUrlError {
            url: url.to_owned(),
            problem,
        };
        let Some((scheme, rest)) = url.split_once("://") else {
            return Err(bad("no scheme (`sftp://` or `file://`)".into()));
        };
        if let Some(i) = rest.find(['?', '#']) {
            return Err(bad(format!(
                "`{}` is not supported: cache options belong in the [cache] section of the config",
                &rest[i..]
            )));
        }
        match scheme {
            "sftp" => parse_sftp(rest).map(CacheUrl::Sftp).map_err(bad),
            "file" => {
                if !rest.starts_with('/') {
                    let host = rest.split('/').next().unwrap_or(rest);
                    return Err(bad(format!(
                        "`file://` takes no host (found `{host}`): write `file:///abs/path`"
                    )));
                }
                Ok(CacheUrl::File {
                    root: absolute_dir(rest).map_err(bad)?,
                })
            }
            "ssh" | "ssh-ng" | "scp" => Err(bad(format!(
                "scheme `{scheme}://` is not supported: the cache is written over SFTP, use `sftp://`"
            ))),
            other => Err(bad(format!(
                "unknown scheme `{other}://`: use `sftp://` or `file://`"
            ))),
        }
    }
}

fn parse_sftp(rest: &str) -> Result<SftpTarget, String> {
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => {
            return Err(format!(
                "no cache directory after the host `{rest}`: add an absolute path such as `/srv/nix-cache`"
            ))
        }
    };
    let (user, hostport) = match authority.rsplit_once('@') {
        Some((user, hostport)) => (Some(user), hostport),
        None => (None, authority),
    };
    if let Some(user) = user {
        if user.is_empty() || user.starts_with('-') || !user.chars().all(is_name_char) {
            return Err(format!(
                "bad user name `{user}` (letters, digits, `.`, `_`, `-`; no password)"
            ));
        }
    }
    let (host, port) = if let Some(bracketed) = hostport.strip_prefix('[') {
        let Some((host, after)) = bracketed.split_once(']') else {
            return Err(format!("unclosed `[` in host `{hostport}`"));
        };
        if host.is_empty()
            || !host
                .chars()
                .all(|c| c.is_ascii_hexdigit() || c == ':' || c == '.')
        {
            return Err(format!("bad IPv6 address `[{host}]`"));
        }
        match after {
            "" => (host, None),
            _ => match after.strip_prefix(':') {
                Some(port) => (host, Some(port)),
                None => return Err(format!("unexpected `{after}` after `[{host}]`")),
            },
        }
    } else {
        match hostport.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (hostport, None),
        }
    };
    if host.is_empty() {
        return Err("no host name".into());
    }
    if host.starts_with('-') || !host.chars().all(|c| is_name_char(c) || c == ':') {
        return Err(format!(
            "bad host `{host}` (a DNS name, an address or a ~/.ssh/config alias)"
        ));
    }
    let port = match port {
        None => None,
        Some(p) => match p.parse::<u16>() {
            Ok(n) if n > 0 => Some(n),
            _ => return Err(format!("bad port `{p}` (1–65535)")),
        },
    };
    Ok(SftpTarget {
        user: user.map(str::to_owned),
        host: host.to_owned(),
        port,
        root: absolute_dir(path)?,
    })
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')
}

/// An absolute directory without `.`/`..` components, normalised (`//`, trailing `/`).
fn absolute_dir(path: &str) -> Result<PathBuf, String> {
    if path.starts_with("/~") {
        return Err(format!(
            "`{path}`: home-relative paths are not supported, give the absolute directory"
        ));
    }
    let mut out = PathBuf::from("/");
    for c in Path::new(path).components() {
        match c {
            Component::RootDir => {}
            Component::Normal(name) => out.push(name),
            Component::CurDir | Component::ParentDir | Component::Prefix(_) => {
                return Err(format!(
                    "`{path}` contains `.` or `..`: give a plain absolute path"
                ))
            }
        }
    }
    Ok(out)
}

impl fmt::Display for CacheUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CacheUrl::File { root } => write!(f, "file://{}", root.display()),
            CacheUrl::Sftp(t) => write!(f, "sftp://{t}"),
        }
    }
}

impl fmt::Display for SftpTarget {
    /// `user@host:port/path` without the scheme, as in messages.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(user) = &self.user {
            write!(f, "{user}@")?;
        }
        if self.host.contains(':') {
            write!(f, "[{}]", self.host)?;
        } else {
            write!(f, "{}", self.host)?;
        }
        if let Some(port) = self.port {
            write!(f, ":{port}")?;
        }
        write!(f, "{}", self.root.display())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sftp(url: &str) -> SftpTarget {
        match url.parse::<CacheUrl>().unwrap() {
            CacheUrl::Sftp(t) => t,
            other => panic!("{other:?}"),
        }
    }

    fn err(url: &str) -> String {
        url.parse::<CacheUrl>().unwrap_err().to_string()
    }

    #[test]
    fn sftp_url_with_user_port_and_path() {
        let t = sftp("sftp://farm@cache.example.org:2222/srv/nix-cache/");
        assert_eq!(t.user.as_deref(), Some("farm"));
        assert_eq!(t.host, "cache.example.org");
        assert_eq!(t.port, Some(2222));
        assert_eq!(t.root, Path::new("/srv/nix-cache"));
        assert_eq!(
            CacheUrl::Sftp(t).to_string(),
            "sftp://farm@cache.example.org:2222/srv/nix-cache"
        );
    }

    #[test]
    fn sftp_url_leaves_user_and_port_to_ssh_config() {
        let t = sftp("sftp://pi//var//cache");
        assert_eq!((t.user, t.port), (None, None));
        assert_eq!(t.host, "pi");
        assert_eq!(t.root, Path::new("/var/cache"));
    }

    #[test]
    fn sftp_url_with_ipv6_host() {
        let t = sftp("sftp://[::1]:22/c");
        assert_eq!(t.host, "::1");
        assert_eq!(CacheUrl::Sftp(t).to_string(), "sftp://[::1]:22/c");
    }

    #[test]
    fn file_url_is_an_absolute_directory() {
        assert_eq!(
            "file:///var/lib/nix-cache".parse::<CacheUrl>().unwrap(),
            CacheUrl::File {
                root: "/var/lib/nix-cache".into()
            }
        );
    }

    #[test]
    fn bad_urls_name_the_bad_part_and_show_a_valid_one() {
        for (url, part) in [
            ("cache.example.org:/srv", "no scheme"),
            ("http://cache/x", "unknown scheme `http://`"),
            ("ssh://cache/x", "use `sftp://`"),
            ("sftp://cache", "no cache directory after the host `cache`"),
            ("sftp://cache:99999/x", "bad port `99999`"),
            ("sftp://cache:/x", "bad port ``"),
            ("sftp://@cache/x", "bad user name ``"),
            (
                "sftp://u:pw@cache/x",
                "bad user name `u:pw` (letters, digits, `.`, `_`, `-`; no password)",
            ),
            ("sftp://-oProxyCommand=x/y", "bad host `-oProxyCommand=x`"),
            ("sftp:///x", "no host name"),
            ("sftp://cache/srv/../etc", "contains `.` or `..`"),
            ("sftp://cache/~/cache", "home-relative"),
            (
                "sftp://cache/x?compression=xz",
                "`?compression=xz` is not supported",
            ),
            ("file://host/x", "`file://` takes no host (found `host`)"),
            ("file://relative", "takes no host"),
        ] {
            let msg = err(url);
            assert!(msg.contains(part), "{url}: {msg}");
            assert!(msg.contains(&format!("`{url}`")), "{msg}");
            assert!(msg.contains("sftp://farm@cache.example.org:2222/srv/nix-cache"));
        }
    }
}
