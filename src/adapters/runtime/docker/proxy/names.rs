//! The container names a build gives, scoped to the build.
//!
//! On Cloud Build each build has a VM of its own, so two builds may both
//! `docker run -d --name db`; on one engine names are engine-wide. So a name NAME that a build
//! gives (a create's `?name=`, a rename) is `builder-BUILD.NAME` on the engine (builder's own
//! containers are `builder-BUILD-…`, never with a dot there), requests of the build that name
//! NAME are sent with that name, and answers show NAME again: names in lists and inspects, the
//! engine's error messages. Another build's NAME is another container, which this build cannot
//! name at all.
//!
//! Only the names the build gave are scoped: an id, an id's prefix or a name builder gave (a
//! step's container) is passed as written, as the engine finds names before id prefixes.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use regex::Regex;
use serde_json::{Map, Value};

use super::super::lock;

/// A build's given names and their containers.
pub struct Names {
    /// What a given name gets in front of it on the engine: `builder-BUILD.`.
    prefix: String,
    /// The names the build gave to containers that may still exist.
    given: Mutex<HashSet<String>>,
    /// The full id of each container the build created with a name, with that name.
    ids: Mutex<HashMap<String, String>>,
}

impl Names {
    pub fn new(build: &str) -> Self {
        Self {
            prefix: format!("builder-{build}."),
            given: Mutex::default(),
            ids: Mutex::default(),
        }
    }

    /// The engine's name for the name `name` the build gives (the engine takes a leading `/`).
    pub fn scoped(&self, name: &str) -> String {
        format!("{}{}", self.prefix, name.trim_start_matches('/'))
    }

    /// Records that a container of the build, `id`, now has the given name `name`.
    pub fn gave(&self, name: &str, id: Option<&str>) {
        let name = name.trim_start_matches('/').to_string();
        if let Some(id) = id {
            lock(&self.ids).insert(id.to_string(), name.clone());
        }
        lock(&self.given).insert(name);
    }

    /// Records that the container the build named `reference` is gone or renamed: the name is
    /// free, and `reference` may be an id's prefix again.
    pub fn freed(&self, reference: &str) {
        let name = reference.trim_start_matches('/');
        lock(&self.given).remove(name);
        lock(&self.ids).retain(|_, given| given != name);
    }

    /// The given name `reference` is, if it is one.
    pub fn given(&self, reference: &str) -> Option<String> {
        let name = reference.trim_start_matches('/');
        lock(&self.given).contains(name).then(|| name.to_string())
    }

    /// The given name of the container `id` (a full id from its create), if it has one.
    pub fn name_of(&self, id: &str) -> Option<String> {
        lock(&self.ids).get(id).cloned()
    }

    /// What the engine knows the container that the build calls `reference` by.
    pub fn engine(&self, reference: &str) -> String {
        match self.given(reference) {
            Some(name) => self.scoped(&name),
            None => reference.to_string(),
        }
    }

    /// The name the build sees for the engine's name `name` (`/` first or not, as given).
    pub fn shown(&self, name: &str) -> String {
        let (slash, bare) = match name.strip_prefix('/') {
            Some(bare) => ("/", bare),
            None => ("", name),
        };
        match bare.strip_prefix(&self.prefix) {
            Some(given) => format!("{slash}{given}"),
            None => name.to_string(),
        }
    }

    /// The engine's text (an error message) with the build's scoped names as it gave them.
    pub fn unscoped(&self, text: &str) -> String {
        text.replace(&self.prefix, "")
    }

    /// A `/containers/json` answer as the build sees it: only the containers whose name matches
    /// one of `filters` (the `name` filters taken off the request: regular expressions, any of
    /// which may match the name with or without its `/`; none keeps all), each's `Names` shown
    /// as given (a link's name is `/PARENT/ALIAS`).
    pub fn listed(&self, list: &mut Value, filters: &[Regex]) {
        let Some(containers) = list.as_array_mut() else {
            return;
        };
        for container in containers.iter_mut() {
            if let Some(Value::Array(names)) = container.get_mut("Names") {
                for name in names.iter_mut().filter_map(as_string) {
                    *name = name
                        .split('/')
                        .map(|part| self.shown(part))
                        .collect::<Vec<_>>()
                        .join("/");
                }
            }
        }
        if filters.is_empty() {
            return;
        }
        containers.retain(|container| {
            let names = container.get("Names").and_then(Value::as_array);
            // The container's own name, not a link's.
            let own = names
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .find(|name| name.matches('/').count() <= 1);
            own.is_some_and(|name| {
                let bare = name.trim_start_matches('/');
                filters
                    .iter()
                    .any(|filter| filter.is_match(name) || filter.is_match(bare))
            })
        });
    }

    /// A container's inspect answer as the build sees it: its `Name` as given.
    pub fn inspected(&self, container: &mut Value) {
        if let Some(name) = container.get_mut("Name").and_then(as_string) {
            *name = self.shown(name);
        }
    }

    /// The containers a create body names (network, PID and IPC modes of `container:NAME`,
    /// `VolumesFrom`, `Links`), named as the engine knows them. A link without an alias keeps
    /// the given name as its alias.
    pub fn scope_references(&self, body: &mut Value) {
        let Some(host) = body.get_mut("HostConfig").and_then(Value::as_object_mut) else {
            return;
        };
        for key in ["NetworkMode", "PidMode", "IpcMode"] {
            if let Some(mode) = host.get_mut(key).and_then(as_string)
                && let Some(container) = mode.strip_prefix("container:")
            {
                *mode = format!("container:{}", self.engine(container));
            }
        }
        for reference in strings_mut(host, "VolumesFrom") {
            let (container, mode) = match reference.split_once(':') {
                Some((container, mode)) => (container, format!(":{mode}")),
                None => (reference.as_str(), String::new()),
            };
            *reference = format!("{}{mode}", self.engine(container));
        }
        for link in strings_mut(host, "Links") {
            let (container, alias) = link.split_once(':').unwrap_or((link, link));
            let container = container.trim_start_matches('/');
            *link = format!("{}:{alias}", self.engine(container));
        }
    }
}

/// Adds the given name `name` to a create body's aliases on each user-defined network the
/// container joins, where the engine would have resolved its name (the default bridge
/// resolves none, and refuses aliases).
pub fn aliased(body: &mut Value, name: &str) {
    let mode = body
        .pointer("/HostConfig/NetworkMode")
        .and_then(Value::as_str);
    let mode = mode.unwrap_or_default().to_string();
    let Some(body) = body.as_object_mut() else {
        return;
    };
    let Some(config) = object_at(body, "NetworkingConfig") else {
        return;
    };
    let Some(endpoints) = object_at(config, "EndpointsConfig") else {
        return;
    };
    let networks: Vec<String> = endpoints.keys().cloned().chain([mode]).collect();
    for network in networks {
        if matches!(
            network.as_str(),
            "" | "default" | "bridge" | "host" | "none"
        ) || network.contains(':')
        {
            continue;
        }
        let endpoint = endpoints
            .entry(network)
            .or_insert_with(|| Value::Object(Map::new()));
        alias(endpoint, name);
    }
}

/// Adds `name` to an endpoint's `Aliases` (of a create's network, or a network connect).
pub fn alias(endpoint: &mut Value, name: &str) {
    if !endpoint.is_object() {
        *endpoint = Value::Object(Map::new());
    }
    let Some(endpoint) = endpoint.as_object_mut() else {
        return;
    };
    let aliases = endpoint
        .entry("Aliases")
        .or_insert_with(|| Value::Array(Vec::new()));
    if !aliases.is_array() {
        *aliases = Value::Array(Vec::new());
    }
    if let Some(aliases) = aliases.as_array_mut()
        && !aliases.iter().any(|a| a.as_str() == Some(name))
    {
        aliases.push(Value::from(name));
    }
}

/// The object at `key` in `object`, made one if it is missing or something else.
fn object_at<'a>(
    object: &'a mut Map<String, Value>,
    key: &str,
) -> Option<&'a mut Map<String, Value>> {
    let value = object
        .entry(key)
        .or_insert_with(|| Value::Object(Map::new()));
    if !value.is_object() {
        *value = Value::Object(Map::new());
    }
    value.as_object_mut()
}

fn as_string(value: &mut Value) -> Option<&mut String> {
    match value {
        Value::String(text) => Some(text),
        _ => None,
    }
}

fn strings_mut<'a>(
    object: &'a mut Map<String, Value>,
    key: &str,
) -> impl Iterator<Item = &'a mut String> {
    object
        .get_mut(key)
        .and_then(Value::as_array_mut)
        .into_iter()
        .flatten()
        .filter_map(as_string)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn names() -> Names {
        let names = Names::new("b1");
        names.gave("/db", Some("f00d"));
        names
    }

    #[test]
    fn given_names_are_scoped_and_shown_back() {
        let names = names();
        assert_eq!(names.engine("db"), "builder-b1.db");
        assert_eq!(names.engine("/db"), "builder-b1.db");
        // Ids, prefixes and builder's own names go as written.
        assert_eq!(names.engine("f00d"), "f00d");
        assert_eq!(names.engine("builder-b1-step-0"), "builder-b1-step-0");
        assert_eq!(names.shown("/builder-b1.db"), "/db");
        assert_eq!(names.shown("builder-b1.db"), "db");
        assert_eq!(names.shown("/builder-b2.db"), "/builder-b2.db");
        assert_eq!(names.name_of("f00d").as_deref(), Some("db"));
        assert_eq!(
            names.unscoped("Conflict. The container name \"/builder-b1.db\" is already in use"),
            "Conflict. The container name \"/db\" is already in use"
        );
        names.freed("db");
        assert_eq!(names.engine("db"), "db");
        assert_eq!(names.name_of("f00d"), None);
    }

    #[test]
    fn lists_show_given_names_and_filter_on_them() {
        let names = names();
        names.gave("web", None);
        let list = json!([
            {"Id": "1", "Names": ["/builder-b1.db", "/builder-b1.web/db"]},
            {"Id": "2", "Names": ["/builder-b1.web"]},
            {"Id": "3", "Names": ["/builder-b1-step-0"]},
        ]);
        let mut all = list.clone();
        names.listed(&mut all, &[]);
        assert_eq!(all[0]["Names"], json!(["/db", "/web/db"]));
        assert_eq!(all[2]["Names"], json!(["/builder-b1-step-0"]));
        // `docker ps --filter name=db`: a regular expression on the name, `/` first or not.
        for (filter, ids) in [
            ("db", vec!["1"]),
            ("^db$", vec!["1"]),
            ("^/web$", vec!["2"]),
            ("b1", vec!["3"]),
        ] {
            let mut filtered = list.clone();
            names.listed(&mut filtered, &[Regex::new(filter).unwrap()]);
            let kept: Vec<&str> = filtered
                .as_array()
                .unwrap()
                .iter()
                .map(|c| c["Id"].as_str().unwrap())
                .collect();
            assert_eq!(kept, ids, "{filter}");
        }
    }

    #[test]
    fn references_in_a_create_are_scoped_and_given_names_aliased() {
        let names = names();
        let mut body = json!({"HostConfig": {
            "NetworkMode": "container:db",
            "PidMode": "container:f00d",
            "VolumesFrom": ["db:ro", "other"],
            "Links": ["db", "/db:database", "other:o"],
        }});
        names.scope_references(&mut body);
        assert_eq!(
            body["HostConfig"],
            json!({
                "NetworkMode": "container:builder-b1.db",
                "PidMode": "container:f00d",
                "VolumesFrom": ["builder-b1.db:ro", "other"],
                "Links": ["builder-b1.db:db", "builder-b1.db:database", "other:o"],
            })
        );
        let mut create = json!({
            "HostConfig": {"NetworkMode": "builder-b1-network"},
            "NetworkingConfig": {"EndpointsConfig": {
                "builder-b1-network": {"Aliases": ["database"]},
                "bridge": {},
            }},
        });
        aliased(&mut create, "db");
        aliased(&mut create, "db");
        assert_eq!(
            create["NetworkingConfig"]["EndpointsConfig"],
            json!({"builder-b1-network": {"Aliases": ["database", "db"]}, "bridge": {}})
        );
        let mut on_bridge = json!({"HostConfig": {"NetworkMode": "container:x"}});
        aliased(&mut on_bridge, "db");
        assert_eq!(on_bridge["NetworkingConfig"]["EndpointsConfig"], json!({}));
    }
}
