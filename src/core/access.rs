//! What `builder serve` lets through and how much of it, as pure decisions the HTTP edge applies:
//! the Host names it answers to (DNS rebinding), the console's session cookies (an expiry MACed
//! under a key derived from the API token), the throttle on failed logins per client, the most
//! rows a page may ask for, and the seats for log followers. Times are arguments: nothing here
//! reads a clock.

use std::collections::{HashMap, VecDeque};
// `core::net`, the same type as `std::net`'s: an address is a value here, never a socket.
use ::core::net::IpAddr;
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

/// The most rows one page of a list (`limit`) may ask for.
pub const MAX_PAGE: u32 = 1000;
/// The most notifications one list may ask for: each brings its attempts along.
pub const MAX_NOTIFICATIONS: u32 = 500;

/// A page size as asked for, or why it is refused: over [`MAX_PAGE`] is an error rather than
/// silently fewer rows, so a client that pages by counting rows is never misled.
pub fn page_limit(limit: u32) -> Result<u32, String> {
    limit_within(limit, MAX_PAGE).map_err(|refused| format!("{refused}: ask for fewer and page on"))
}

/// A list's size as asked for, or why it is refused: over `most` is an error, as for
/// [`page_limit`].
pub fn limit_within(limit: u32, most: u32) -> Result<u32, String> {
    if limit > most {
        Err(format!(
            "limit {limit} is over the most one page returns, {most}"
        ))
    } else {
        Ok(limit)
    }
}

/// The names a server answers to in a request's `Host`. A DNS-rebinding page reaches the server
/// under the attacker's name, so a name must be listed; an IP address never names another site,
/// so IP literals always pass, and so does `localhost`. `*` lets every name through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostAllowlist {
    /// Lowercase names without port or trailing dot.
    names: Vec<String>,
    any: bool,
}

impl Default for HostAllowlist {
    fn default() -> Self {
        HostAllowlist {
            names: vec!["localhost".into()],
            any: false,
        }
    }
}

impl HostAllowlist {
    /// `localhost` and `entries`: names, with or without a port (which is not compared), or `*`
    /// for any name. A URL or a path is refused: it could never match a `Host`, and every
    /// request would be turned away.
    pub fn new<S: AsRef<str>>(entries: impl IntoIterator<Item = S>) -> Result<Self, String> {
        let mut list = HostAllowlist::default();
        for entry in entries {
            match entry.as_ref().trim() {
                "*" => list.any = true,
                entry if entry.is_empty() || entry.contains(['/', '@', ' ']) => {
                    return Err(format!(
                        "allowed host {entry:?}: expected a name as a Host header carries it, \
                         such as builder.example.com (no scheme, path or user)"
                    ));
                }
                entry => list.names.push(host_name(entry)),
            }
        }
        Ok(list)
    }

    /// Whether a request whose `Host` header is `host` is for this server.
    pub fn allows(&self, host: &str) -> bool {
        let name = host_name(host);
        self.any || name.parse::<IpAddr>().is_ok() || self.names.contains(&name)
    }
}

/// The name (or IP address) of a `Host` value: lowercase, without port, brackets or trailing dot.
fn host_name(host: &str) -> String {
    let host = host.trim();
    let name = match host.strip_prefix('[') {
        // `[::1]:8080`
        Some(rest) => rest.split(']').next().unwrap_or(rest),
        None => host.rsplit_once(':').map_or(host, |(name, port)| {
            if port.chars().all(|c| c.is_ascii_digit()) {
                name
            } else {
                host
            }
        }),
    };
    name.trim_end_matches('.').to_ascii_lowercase()
}

type HmacSha256 = Hmac<Sha256>;

/// What a console session cookie carries: `v1.EXPIRES.MAC`, EXPIRES in seconds since the Unix
/// epoch and MAC an HMAC-SHA256 of `v1.EXPIRES` under a key derived from the API token. Servers
/// that share the token accept each other's sessions with nothing stored, and a new token ends
/// every session.
#[derive(Clone)]
pub struct SessionKey(HmacSha256);

impl std::fmt::Debug for SessionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionKey(..)")
    }
}

/// Why a session cookie is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionRefused {
    Malformed,
    Forged,
    Expired,
}

impl SessionKey {
    /// The key of the sessions of a server whose API token is `token`. Derived (and labelled) so
    /// that no cookie is a MAC a token holder could be asked to make for another purpose.
    pub fn derive(token: &[u8]) -> Self {
        let mut derive = HmacSha256::new_from_slice(token).expect("HMAC takes keys of any length");
        derive.update(b"builder console session key v1");
        let key = derive.finalize().into_bytes();
        SessionKey(HmacSha256::new_from_slice(&key).expect("HMAC takes keys of any length"))
    }

    /// A session that ends at `expires` (seconds since the Unix epoch).
    pub fn issue(&self, expires: u64) -> String {
        let claim = format!("v1.{expires}");
        let mut mac = self.0.clone();
        mac.update(claim.as_bytes());
        format!(
            "{claim}.{}",
            URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
        )
    }

    /// Whether `cookie` is a session of this key still open at `now` (seconds since the Unix
    /// epoch); the MAC is compared in constant time.
    pub fn verify(&self, cookie: &str, now: u64) -> Result<(), SessionRefused> {
        let (claim, tag) = cookie.rsplit_once('.').ok_or(SessionRefused::Malformed)?;
        let expires: u64 = claim
            .strip_prefix("v1.")
            .and_then(|expires| expires.parse().ok())
            .ok_or(SessionRefused::Malformed)?;
        let tag = URL_SAFE_NO_PAD
            .decode(tag)
            .map_err(|_| SessionRefused::Malformed)?;
        let mut mac = self.0.clone();
        mac.update(claim.as_bytes());
        mac.verify_slice(&tag).map_err(|_| SessionRefused::Forged)?;
        if now >= expires {
            return Err(SessionRefused::Expired);
        }
        Ok(())
    }
}

/// Failed logins per client, over a sliding window: past `limit` failures within `window`, a
/// client is refused until its oldest failure leaves the window. IPv6 clients are counted by
/// their /64, the block one machine usually holds. At most `capacity` clients are remembered;
/// past that the one whose last failure is oldest is forgotten, so the table's size is bounded
/// whatever the number of addresses that try.
#[derive(Debug)]
pub struct LoginThrottle {
    limit: usize,
    window: Duration,
    capacity: usize,
    failures: HashMap<IpAddr, VecDeque<Instant>>,
}

impl LoginThrottle {
    pub fn new(limit: usize, window: Duration, capacity: usize) -> Self {
        LoginThrottle {
            limit: limit.max(1),
            window,
            capacity: capacity.max(1),
            failures: HashMap::new(),
        }
    }

    /// `Err(wait)`: `client` may not try again before `wait` has passed.
    pub fn check(&mut self, client: IpAddr, now: Instant) -> Result<(), Duration> {
        let key = client_key(client);
        let Some(failures) = self.failures.get_mut(&key) else {
            return Ok(());
        };
        while failures
            .front()
            .is_some_and(|&at| now.duration_since(at) >= self.window)
        {
            failures.pop_front();
        }
        match failures.front() {
            None => {
                self.failures.remove(&key);
                Ok(())
            }
            Some(&oldest) if failures.len() >= self.limit => {
                Err(self.window.saturating_sub(now.duration_since(oldest)))
            }
            Some(_) => Ok(()),
        }
    }

    /// `client` gave a wrong token at `now`.
    pub fn failed(&mut self, client: IpAddr, now: Instant) {
        let key = client_key(client);
        if !self.failures.contains_key(&key) && self.failures.len() >= self.capacity {
            let window = self.window;
            self.failures.retain(|_, failures| {
                failures
                    .back()
                    .is_some_and(|&at| now.duration_since(at) < window)
            });
            if self.failures.len() >= self.capacity
                && let Some(stalest) = self
                    .failures
                    .iter()
                    .min_by_key(|(_, failures)| failures.back().copied())
                    .map(|(key, _)| *key)
            {
                self.failures.remove(&stalest);
            }
        }
        let failures = self.failures.entry(key).or_default();
        failures.push_back(now);
        // Only the newest `limit` failures decide anything.
        while failures.len() > self.limit {
            failures.pop_front();
        }
    }

    /// `client` logged in: its failures are forgiven.
    pub fn succeeded(&mut self, client: IpAddr) {
        self.failures.remove(&client_key(client));
    }
}

/// The address a client is counted under: IPv4 as is (IPv4-mapped IPv6 too), IPv6 by its /64.
fn client_key(client: IpAddr) -> IpAddr {
    match client.to_canonical() {
        IpAddr::V6(v6) => {
            let bits = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(bits.into())
        }
        v4 => v4,
    }
}

/// Seats for log followers: at most `per_server` at once, and `per_build` on one build. A
/// follower of a build that runs elsewhere reads the store every 250 ms, so the seats bound
/// what followers cost the store's connections and the server's sockets.
#[derive(Debug)]
pub struct FollowerSeats {
    per_server: usize,
    per_build: usize,
    taken: usize,
    by_build: HashMap<String, usize>,
}

/// Why a follower found no seat.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoSeat {
    /// All `usize` seats of the server are taken.
    Server(usize),
    /// All `usize` seats of this build are taken.
    Build(usize),
}

impl std::fmt::Display for NoSeat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NoSeat::Server(seats) => write!(
                f,
                "this server already streams {seats} logs, its most (maxFollowers): try again later"
            ),
            NoSeat::Build(seats) => write!(
                f,
                "this build's log already has {seats} followers, the most one build may have \
                 (maxFollowersPerBuild): try again later"
            ),
        }
    }
}

impl FollowerSeats {
    pub fn new(per_server: usize, per_build: usize) -> Self {
        FollowerSeats {
            per_server,
            per_build,
            taken: 0,
            by_build: HashMap::new(),
        }
    }

    /// Takes a seat to follow `build`'s log; give it back with [`FollowerSeats::leave`].
    pub fn take(&mut self, build: &str) -> Result<(), NoSeat> {
        if self.taken >= self.per_server {
            return Err(NoSeat::Server(self.per_server));
        }
        let on_build = self.by_build.get(build).copied().unwrap_or(0);
        if on_build >= self.per_build {
            return Err(NoSeat::Build(self.per_build));
        }
        self.taken += 1;
        self.by_build.insert(build.to_string(), on_build + 1);
        Ok(())
    }

    /// Gives back a seat taken on `build`.
    pub fn leave(&mut self, build: &str) {
        if let Some(on_build) = self.by_build.get_mut(build) {
            *on_build -= 1;
            self.taken -= 1;
            if *on_build == 0 {
                self.by_build.remove(build);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_over_the_cap_are_refused() {
        assert_eq!(page_limit(50), Ok(50));
        assert_eq!(page_limit(MAX_PAGE), Ok(MAX_PAGE));
        let refused = page_limit(MAX_PAGE + 1).unwrap_err();
        assert!(
            refused.contains("1001") && refused.contains("1000"),
            "{refused}"
        );
        assert_eq!(limit_within(MAX_NOTIFICATIONS, MAX_NOTIFICATIONS), Ok(500));
        let refused = limit_within(501, MAX_NOTIFICATIONS).unwrap_err();
        assert!(
            refused.contains("501") && refused.contains("500"),
            "{refused}"
        );
    }

    #[test]
    fn hosts_pass_when_listed_localhost_or_an_address() {
        let list = HostAllowlist::new(["Builder.Example.com", "ci.example.org:8443"]).unwrap();
        for host in [
            "localhost",
            "localhost:8080",
            "LOCALHOST.",
            "127.0.0.1:8080",
            "[::1]:8080",
            "[::1]",
            "10.0.0.7",
            "builder.example.com",
            "builder.example.com:443",
            "ci.example.org",
        ] {
            assert!(list.allows(host), "{host}");
        }
        for host in [
            "evil.example",
            "evil.example:8080",
            "builder.example.com.evil.example",
            "localhost.evil.example",
            "",
            "127.0.0.1.nip.io",
        ] {
            assert!(!list.allows(host), "{host}");
        }
        assert!(
            HostAllowlist::new(["*"])
                .unwrap()
                .allows("anything.example")
        );
        assert!(!HostAllowlist::default().allows("builder.example.com"));
        for entry in [
            "https://builder.example.com",
            "builder.example.com/",
            "",
            "a@b",
        ] {
            let refused = HostAllowlist::new([entry]).unwrap_err();
            assert!(refused.contains("builder.example.com"), "{refused}");
        }
    }

    #[test]
    fn a_session_holds_until_it_expires_and_only_under_its_key() {
        let key = SessionKey::derive(b"token");
        let cookie = key.issue(1000);
        assert!(cookie.starts_with("v1.1000."), "{cookie}");
        assert_eq!(key.verify(&cookie, 999), Ok(()));
        assert_eq!(key.verify(&cookie, 1000), Err(SessionRefused::Expired));
        // Another token's key, a later expiry under the same MAC, junk.
        let other = SessionKey::derive(b"another token");
        assert_eq!(other.verify(&cookie, 10), Err(SessionRefused::Forged));
        let (_, tag) = cookie.rsplit_once('.').unwrap();
        let extended = format!("v1.99999.{tag}");
        assert_eq!(key.verify(&extended, 10), Err(SessionRefused::Forged));
        for junk in ["", "token", "v1.x.AAAA", "v2.1000.AAAA", "v1.1000.!!"] {
            assert_eq!(
                key.verify(junk, 10),
                Err(SessionRefused::Malformed),
                "{junk}"
            );
        }
        // The raw token is not a session.
        assert!(key.verify("token", 10).is_err());
    }

    #[test]
    fn failed_logins_past_the_limit_wait_out_the_window() {
        let start = Instant::now();
        let minute = Duration::from_secs(60);
        let mut throttle = LoginThrottle::new(3, minute, 100);
        let client: IpAddr = "192.0.2.1".parse().unwrap();
        let other: IpAddr = "192.0.2.2".parse().unwrap();
        for second in 0..3 {
            let now = start + Duration::from_secs(second);
            assert_eq!(throttle.check(client, now), Ok(()));
            throttle.failed(client, now);
        }
        let now = start + Duration::from_secs(10);
        assert_eq!(throttle.check(client, now), Err(Duration::from_secs(50)));
        assert_eq!(throttle.check(other, now), Ok(()));
        // The first failure leaves the window at 60 s.
        assert_eq!(throttle.check(client, start + minute), Ok(()));
        throttle.failed(client, start + minute);
        assert!(throttle.check(client, start + minute).is_err());
        throttle.succeeded(client);
        assert_eq!(throttle.check(client, start + minute), Ok(()));
    }

    #[test]
    fn an_ipv6_machine_is_counted_by_its_block_and_the_table_stays_bounded() {
        let start = Instant::now();
        let mut throttle = LoginThrottle::new(1, Duration::from_secs(60), 2);
        let one: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let same_block: IpAddr = "2001:db8:1:2::ffff".parse().unwrap();
        throttle.failed(one, start);
        assert!(throttle.check(same_block, start).is_err());
        let mapped: IpAddr = "::ffff:192.0.2.9".parse().unwrap();
        throttle.failed("192.0.2.9".parse().unwrap(), start);
        assert!(throttle.check(mapped, start).is_err());
        // A third client pushes out the stalest, never growing the table.
        let later = start + Duration::from_secs(1);
        throttle.failed("192.0.2.10".parse().unwrap(), later);
        assert_eq!(throttle.failures.len(), 2);
    }

    #[test]
    fn followers_take_seats_per_server_and_per_build() {
        let mut seats = FollowerSeats::new(3, 2);
        assert_eq!(seats.take("a"), Ok(()));
        assert_eq!(seats.take("a"), Ok(()));
        assert_eq!(seats.take("a"), Err(NoSeat::Build(2)));
        assert_eq!(seats.take("b"), Ok(()));
        assert_eq!(seats.take("c"), Err(NoSeat::Server(3)));
        seats.leave("a");
        assert_eq!(seats.take("c"), Ok(()));
        for build in ["a", "b", "c"] {
            seats.leave(build);
        }
        assert_eq!((seats.taken, seats.by_build.len()), (0, 0));
        // Leaving a build never joined changes nothing.
        seats.leave("d");
        assert_eq!(seats.taken, 0);
    }
}
