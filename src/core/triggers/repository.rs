//! Where a trigger's repository is fetched from: the GitHub server's base URL (github.com or a
//! GitHub Enterprise server, a setting of the server) followed by the trigger's owner and name.
//! Never a URL a delivery carries: a push's `clone_url` is the sender's text, and fetching it
//! would let a payload point the server at a `file://` path, a local directory or an internal
//! host. A push whose `clone_url` names another place than its trigger's repository is refused.

use std::fmt;
use std::str::FromStr;

/// The GitHub server whose repositories triggers name: its base URL, `https://github.com` by
/// default or a GitHub Enterprise server's (`https://github.example.com`), without a trailing
/// `/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GitHubServer {
    base: String,
}

impl Default for GitHubServer {
    fn default() -> Self {
        GitHubServer {
            base: "https://github.com".into(),
        }
    }
}

/// Why a GitHub base URL setting is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadServer {
    pub url: String,
    pub reason: &'static str,
}

impl fmt::Display for BadServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "GitHub URL {:?}: {}", self.url, self.reason)
    }
}

impl std::error::Error for BadServer {}

impl FromStr for GitHubServer {
    type Err = BadServer;

    /// `http://` or `https://`, a host, an optional port and path; no credentials, query or
    /// fragment (they would be pasted into every repository's URL).
    fn from_str(url: &str) -> Result<Self, Self::Err> {
        let bad = |reason| BadServer {
            url: url.to_string(),
            reason,
        };
        let scheme = ["https://", "http://"]
            .into_iter()
            .find(|scheme| url.starts_with(scheme))
            .ok_or_else(|| {
                bad("expected an http:// or https:// URL, e.g. https://github.example.com")
            })?;
        let rest = url[scheme.len()..].trim_end_matches('/');
        if rest.is_empty() || rest.starts_with('/') {
            return Err(bad("it names no host"));
        }
        if rest
            .chars()
            .any(|c| matches!(c, '@' | '?' | '#' | '\\') || c.is_whitespace() || c.is_control())
        {
            return Err(bad(
                "a base URL carries no credentials, query, fragment or spaces",
            ));
        }
        Ok(GitHubServer {
            base: format!("{scheme}{rest}"),
        })
    }
}

impl fmt::Display for GitHubServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.base)
    }
}

/// Why a trigger's repository has no URL on the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadRepository {
    pub repository: String,
}

impl fmt::Display for BadRepository {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:?} is not a GitHub repository name: an owner and a name of ASCII letters, digits, \
             `-`, `_` and `.`",
            self.repository
        )
    }
}

impl GitHubServer {
    /// The URL of `owner/name` on this server, `BASE/OWNER/NAME.git`. Both are GitHub names
    /// (ASCII letters, digits, `-`, `_`, `.`; not `.` or `..`), so that a trigger file cannot
    /// climb out of the server's path or add a query.
    pub fn repository_url(&self, owner: &str, name: &str) -> Result<String, BadRepository> {
        let is_name = |part: &str| {
            !part.is_empty()
                && part.len() <= 100
                && part != "."
                && part != ".."
                && part
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        };
        if !is_name(owner) || !is_name(name) {
            return Err(BadRepository {
                repository: format!("{owner}/{name}"),
            });
        }
        Ok(format!("{}/{owner}/{name}.git", self.base))
    }
}

/// Whether a push's `clone_url` names the repository at `url` (from
/// [`GitHubServer::repository_url`]): the same URL up to ASCII case (GitHub's names are
/// case-insensitive), a trailing `/` and the `.git` suffix.
pub fn names_repository(clone_url: &str, url: &str) -> bool {
    let bare = |url: &str| {
        let url = url.trim_end_matches('/');
        url.strip_suffix(".git").unwrap_or(url).to_ascii_lowercase()
    };
    bare(clone_url) == bare(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_server_is_github_com() {
        let url = GitHubServer::default().repository_url("acme", "app");
        assert_eq!(url.unwrap(), "https://github.com/acme/app.git");
    }

    #[test]
    fn an_enterprise_server_keeps_its_port_and_path() {
        for (setting, expected) in [
            (
                "https://ghe.example.com",
                "https://ghe.example.com/acme/app.git",
            ),
            (
                "https://ghe.example.com/",
                "https://ghe.example.com/acme/app.git",
            ),
            (
                "http://10.0.0.5:8080/git/",
                "http://10.0.0.5:8080/git/acme/app.git",
            ),
        ] {
            let server: GitHubServer = setting.parse().unwrap();
            assert_eq!(server.repository_url("acme", "app").unwrap(), expected);
        }
    }

    #[test]
    fn base_urls_that_are_not_plain_http_are_refused() {
        for (setting, reason) in [
            ("file:///srv/git", "expected an http:// or https:// URL"),
            ("/srv/git", "expected an http:// or https:// URL"),
            ("github.com", "expected an http:// or https:// URL"),
            ("https://", "names no host"),
            ("https:///x", "names no host"),
            ("https://user:pw@ghe.example.com", "no credentials"),
            ("https://ghe.example.com/?a=b", "no credentials, query"),
            ("https://ghe.example.com/#x", "fragment"),
            ("https://ghe example.com", "spaces"),
        ] {
            let error = setting.parse::<GitHubServer>().unwrap_err();
            assert!(error.to_string().contains(reason), "{setting}: {error}");
        }
    }

    #[test]
    fn repository_names_cannot_leave_the_server_s_path() {
        let server = GitHubServer::default();
        assert_eq!(
            server.repository_url("Acme-ML", ".github").unwrap(),
            "https://github.com/Acme-ML/.github.git"
        );
        for (owner, name) in [
            ("acme", ".."),
            ("..", "app"),
            ("acme", "a/b"),
            ("acme", "app?x=1"),
            ("", "app"),
            ("acme", ""),
            ("acme", "app#x"),
            ("ac me", "app"),
        ] {
            let error = server.repository_url(owner, name).unwrap_err();
            assert!(
                error
                    .to_string()
                    .contains("is not a GitHub repository name"),
                "{owner}/{name}: {error}"
            );
        }
    }

    #[test]
    fn a_clone_url_names_a_repository_up_to_case_and_suffix() {
        let url = "https://github.com/acme/app.git";
        for same in [
            "https://github.com/acme/app.git",
            "https://github.com/Acme/App.git",
            "https://github.com/acme/app",
            "https://github.com/acme/app/",
        ] {
            assert!(names_repository(same, url), "{same}");
        }
        for other in [
            "file:///srv/git/acme/app.git",
            "/srv/git/acme/app.git",
            "https://internal.example/acme/app.git",
            "https://github.com/acme/other.git",
            "https://github.com/acme/app.git?x",
            "http://github.com/acme/app.git",
        ] {
            assert!(!names_repository(other, url), "{other}");
        }
    }
}
