//! GitHub webhook deliveries: whether one really comes from GitHub (its `X-Hub-Signature-256`),
//! and what it asks for (a ping, a push to a branch or tag, a pull request opened or updated, a
//! comment on a pull request, or an event that starts no build).
//! The server passes in the headers and the raw body; nothing here does I/O.
//!
//! The contract is verify, then parse: [`verify`] must accept a body before [`parse`] reads it,
//! so that nothing an unauthenticated sender wrote is ever interpreted.

use std::fmt;

use hmac::{Hmac, KeyInit, Mac};
use serde::de::IgnoredAny;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

/// The header carrying GitHub's signature of the body.
pub const SIGNATURE_HEADER: &str = "X-Hub-Signature-256";

const SIGNATURE_PREFIX: &str = "sha256=";

/// The SHA GitHub gives for the side of a push where the ref does not exist: `before` of a created
/// ref, `after` of a deleted one.
pub const NULL_SHA: &str = "0000000000000000000000000000000000000000";

/// Cloud Build documents these markers in lowercase only, so `[Skip CI]` does not skip: a build
/// that runs when unwanted costs less than one silently skipped.
const SKIP_CI_MARKERS: [&str; 2] = ["[skip ci]", "[ci skip]"];

type HmacSha256 = Hmac<Sha256>;

/// The `X-Hub-Signature-256` value GitHub sends with `body`: `sha256=` and the lowercase hex
/// HMAC-SHA256 of the body under `secret`.
pub fn sign(secret: &[u8], body: &[u8]) -> String {
    format!(
        "{SIGNATURE_PREFIX}{}",
        hex(&mac(secret, body).finalize().into_bytes())
    )
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// Checks that `signature` (the `X-Hub-Signature-256` header) signs `body` under `secret`.
/// `body` must be the bytes exactly as received: the signature covers them, not their JSON.
pub fn verify(secret: &[u8], body: &[u8], signature: Option<&str>) -> Result<(), SignatureError> {
    Signature::parse(signature)?.verify(secret, body)
}

/// An `X-Hub-Signature-256` header read before the body is: a request without one, or with one
/// that cannot be a signature, is refused without reading a body of up to 25 MB.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Signature([u8; 32]);

impl Signature {
    /// Hex digits are accepted in either case: GitHub sends lowercase, and the digest they spell
    /// is the same.
    pub fn parse(header: Option<&str>) -> Result<Signature, SignatureError> {
        header
            .ok_or(SignatureError::Missing)?
            .strip_prefix(SIGNATURE_PREFIX)
            .and_then(decode_digest)
            .map(Signature)
            .ok_or(SignatureError::Malformed)
    }

    /// The comparison takes the same time wherever the signatures differ, so a sender cannot find
    /// the right one byte by byte.
    pub fn verify(&self, secret: &[u8], body: &[u8]) -> Result<(), SignatureError> {
        mac(secret, body)
            .verify_slice(&self.0)
            .map_err(|_| SignatureError::Mismatch)
    }
}

/// Whether `given` is the secret `expected` (a webhook trigger's `secret` parameter), in a time
/// that does not depend on where they differ: both are MACed under a key of their own and the
/// MACs compared as GitHub signatures are.
pub fn same_secret(given: &[u8], expected: &[u8]) -> bool {
    const KEY: &[u8] = b"builder webhook trigger secret";
    let expected = mac(KEY, expected).finalize().into_bytes();
    mac(KEY, given).verify_slice(&expected).is_ok()
}

/// The longest `X-GitHub-Delivery` or `X-GitHub-Event` value taken: GitHub's are a 36-character
/// GUID and event names of under 30; anything longer is not GitHub's, and would be stored.
pub const MAX_HEADER_LEN: usize = 64;

/// The SHA-256 of a delivery's body, in hex: what a replay under a new `X-GitHub-Delivery` id
/// (which the signature does not cover) has in common with the delivery it copies.
pub fn body_digest(body: &[u8]) -> String {
    hex(&Sha256::digest(body))
}

fn mac(secret: &[u8], body: &[u8]) -> HmacSha256 {
    let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(body);
    mac
}

/// The 32 bytes that 64 hex digits spell, or `None` for anything else.
fn decode_digest(hex: &str) -> Option<[u8; 32]> {
    let hex = hex.as_bytes();
    if hex.len() != 64 {
        return None;
    }
    let digit = |byte: u8| char::from(byte).to_digit(16);
    let mut digest = [0; 32];
    for (byte, pair) in digest.iter_mut().zip(hex.chunks_exact(2)) {
        *byte = (digit(pair[0])? << 4 | digit(pair[1])?) as u8;
    }
    Some(digest)
}

/// Why a delivery is refused before its body is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignatureError {
    /// No signature: the webhook has no secret on GitHub, or the request is not from GitHub.
    Missing,
    /// The header is not `sha256=` followed by 64 hex digits.
    Malformed,
    /// The signature is not the body's under our secret: the secrets differ, or the body was
    /// forged or altered on the way.
    Mismatch,
}

impl fmt::Display for SignatureError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Missing => write!(
                f,
                "no {SIGNATURE_HEADER} header: give the webhook on GitHub the secret builder has"
            ),
            Self::Malformed => write!(
                f,
                "the {SIGNATURE_HEADER} header is not \"{SIGNATURE_PREFIX}\" followed by 64 hex \
                 digits"
            ),
            Self::Mismatch => write!(
                f,
                "the {SIGNATURE_HEADER} header does not sign this body: the webhook's secret on \
                 GitHub is not the one builder has, or the body was altered"
            ),
        }
    }
}

impl std::error::Error for SignatureError {}

/// What a verified delivery asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    /// GitHub trying out a new webhook.
    Ping(Ping),
    /// A branch or tag was created, moved or deleted.
    Push(Push),
    /// A push to a ref that is neither a branch nor a tag (`refs/notes/…`): nothing to build.
    PushToOtherRef { ref_name: String },
    /// Something happened to a pull request (`pull_request`): opened, pushed to, closed…
    PullRequest(PullRequestEvent),
    /// A comment on an issue or a pull request (`issue_comment`), read for `/gcbrun`.
    Comment(Comment),
    /// Something happened to a check run (`check_run`): a "Re-run" asks for it again.
    CheckRun(CheckRunEvent),
    /// Any other event (`create`, `issues`…): it starts no build.
    Ignored { event: String },
}

/// The `author_association` values of people who can write to the repository: their pull
/// requests and their `/gcbrun` comments count as approved (Cloud Build's "owners and
/// collaborators").
const WRITERS: [&str; 3] = ["OWNER", "MEMBER", "COLLABORATOR"];

/// Whether an `author_association` is one of a repository writer's.
pub fn is_writer(author_association: &str) -> bool {
    WRITERS.contains(&author_association)
}

/// The comment Cloud Build reads as a writer's approval to build a pull request.
pub const GCBRUN: &str = "/gcbrun";

/// A `pull_request` delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PullRequestEvent {
    /// `opened`, `synchronize`, `closed`…
    pub action: String,
    /// An `edited` delivery changed the base branch (its `changes.base`).
    pub base_changed: bool,
    /// The base repository, the one the pull request asks to merge into.
    pub repository: Repository,
    pub pull_request: PullRequest,
}

/// A pull request as its latest delivery describes it: what its builds and later `/gcbrun`
/// comments need (a comment's delivery does not carry it, so the service keeps it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PullRequest {
    pub number: u64,
    /// Its state is `open` (not closed or merged).
    pub open: bool,
    /// The login of who opened it.
    pub author: String,
    /// The author's relation to the base repository (`OWNER`, `CONTRIBUTOR`, `NONE`…).
    pub author_association: String,
    /// Its description (empty when it has none).
    pub body: String,
    pub head_branch: String,
    pub head_sha: String,
    /// `owner/name` of the repository the head branch is in; `None` once that fork is deleted.
    pub head_repository: Option<String>,
    /// The clone URL of that repository (empty once it is deleted).
    pub head_repo_url: String,
    pub base_branch: String,
}

impl PullRequest {
    /// The head branch is in another repository than `base` (a fork), or in one since deleted.
    pub fn is_fork(&self, base: &Repository) -> bool {
        self.head_repository
            .as_ref()
            .is_none_or(|head| !head.eq_ignore_ascii_case(&base.full_name))
    }

    /// A repository writer opened it.
    pub fn author_is_writer(&self) -> bool {
        is_writer(&self.author_association)
    }

    /// Its author is a writer and its description asks for a build (`/gcbrun`).
    pub fn approved_by_description(&self) -> bool {
        self.author_is_writer() && self.body.contains(GCBRUN)
    }

    /// The ref GitHub keeps the head commit under in the base repository, forks' included.
    pub fn head_ref(&self) -> String {
        format!("refs/pull/{}/head", self.number)
    }
}

/// An `issue_comment` delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Comment {
    /// `created`, `edited` or `deleted`.
    pub action: String,
    pub repository: Repository,
    /// The issue's or pull request's number.
    pub number: u64,
    /// The comment is on a pull request (GitHub's pull requests are issues too).
    pub on_pull_request: bool,
    pub author: String,
    pub author_association: String,
    pub body: String,
}

impl Comment {
    /// The comment asks for a build: it contains `/gcbrun`.
    pub fn asks_for_build(&self) -> bool {
        self.body.contains(GCBRUN)
    }

    /// A repository writer wrote it.
    pub fn by_writer(&self) -> bool {
        is_writer(&self.author_association)
    }
}

/// A `check_run` delivery (a GitHub App's): GitHub sends `rerequested` when someone with write
/// access clicks "Re-run" on one of the app's check runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckRunEvent {
    /// `created`, `completed`, `rerequested`, `requested_action`.
    pub action: String,
    pub repository: Repository,
    /// The check run's id.
    pub id: u64,
    /// The id its app gave it when creating it: for builder's, the build's id.
    pub external_id: Option<String>,
    pub head_sha: String,
}

impl CheckRunEvent {
    /// Someone asked for the check run to run again.
    pub fn is_rerun(&self) -> bool {
        self.action == "rerequested"
    }
}

/// GitHub's first delivery to a new webhook. What it carries varies with the kind of hook (a
/// repository's, an organization's, an app's), hence every field is optional.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Ping {
    pub zen: Option<String>,
    pub hook_id: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Push {
    pub repository: Repository,
    pub git_ref: GitRef,
    /// The commit the ref pointed to, [`NULL_SHA`] if the push created it.
    pub before: String,
    /// The commit the ref points to now, [`NULL_SHA`] if the push deleted it.
    pub after: String,
    pub created: bool,
    pub deleted: bool,
    /// The push rewrote history: `before` is not an ancestor of `after`.
    pub forced: bool,
    /// `None` when the push deleted the ref.
    pub head_commit: Option<HeadCommit>,
}

impl Push {
    /// The head commit asks for no build: its message contains `[skip ci]` or `[ci skip]`,
    /// written in lowercase.
    pub fn skips_ci(&self) -> bool {
        self.head_commit.as_ref().is_some_and(|commit| {
            SKIP_CI_MARKERS
                .iter()
                .any(|marker| commit.message.contains(marker))
        })
    }

    /// The commit to build: the head commit, since the `after` of an annotated tag's push is the
    /// tag object, not the commit it tags.
    pub fn commit(&self) -> &str {
        self.head_commit
            .as_ref()
            .map_or(&self.after, |commit| &commit.id)
    }

    /// The push removed the ref, so there is no commit to build. The null `after` is checked as
    /// well as the flag: building it would fail whatever the flag says.
    pub fn is_deletion(&self) -> bool {
        self.deleted || self.after == NULL_SHA
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Repository {
    /// The login of the user or organization that owns the repository.
    pub owner: String,
    pub name: String,
    /// `owner/name`.
    pub full_name: String,
    pub clone_url: String,
}

/// The pushed ref by its short name (`main`, `feature/login`, `v1.2.0`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefKind {
    Branch,
    Tag,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GitRef {
    Branch(String),
    Tag(String),
}

impl GitRef {
    pub fn kind(&self) -> RefKind {
        match self {
            Self::Branch(_) => RefKind::Branch,
            Self::Tag(_) => RefKind::Tag,
        }
    }

    pub fn name(&self) -> &str {
        match self {
            Self::Branch(name) | Self::Tag(name) => name,
        }
    }

    /// `refs/heads/NAME` or `refs/tags/NAME`; `None` for any other ref.
    pub fn from_full_name(full_name: &str) -> Option<Self> {
        if let Some(branch) = full_name.strip_prefix("refs/heads/") {
            Some(Self::Branch(branch.to_string()))
        } else {
            full_name
                .strip_prefix("refs/tags/")
                .map(|tag| Self::Tag(tag.to_string()))
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct HeadCommit {
    pub id: String,
    pub message: String,
}

/// Why a verified delivery cannot be read. The server answers 400 with the message, which GitHub
/// shows in the webhook's recent deliveries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParseError {
    /// The body is not JSON, typically a webhook set to send `application/x-www-form-urlencoded`.
    NotJson { event: String, detail: String },
    /// The body is JSON, but lacks a field builder needs or has one of the wrong type or form.
    Invalid { event: String, detail: String },
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotJson { event, detail } => write!(
                f,
                "{event} payload is not JSON ({detail}): set the webhook's content type to \
                 application/json"
            ),
            Self::Invalid { event, detail } => write!(f, "{event} payload: {detail}"),
        }
    }
}

impl std::error::Error for ParseError {}

/// Reads a delivery that [`verify`] accepted; `event` is its `X-GitHub-Event` header. Every body
/// must be JSON, whatever the event, so that a misconfigured webhook is told so.
pub fn parse(event: &str, body: &[u8]) -> Result<Delivery, ParseError> {
    match event {
        "ping" => read(event, body).map(Delivery::Ping),
        "push" => push(read(event, body)?).map_err(|detail| invalid(event, detail)),
        "pull_request" => pull_request(read(event, body)?)
            .map(Delivery::PullRequest)
            .map_err(|detail| invalid(event, detail)),
        "issue_comment" => comment(read(event, body)?)
            .map(Delivery::Comment)
            .map_err(|detail| invalid(event, detail)),
        "check_run" => check_run(read(event, body)?)
            .map(Delivery::CheckRun)
            .map_err(|detail| invalid(event, detail)),
        _ => {
            read::<IgnoredAny>(event, body)?;
            Ok(Delivery::Ignored {
                event: event.to_string(),
            })
        }
    }
}

fn invalid(event: &str, detail: String) -> ParseError {
    ParseError::Invalid {
        event: event.to_string(),
        detail,
    }
}

fn read<'a, T: Deserialize<'a>>(event: &str, body: &'a [u8]) -> Result<T, ParseError> {
    serde_json::from_slice(body).map_err(|error| {
        let event = event.to_string();
        let detail = error.to_string();
        if error.is_data() {
            ParseError::Invalid { event, detail }
        } else {
            ParseError::NotJson { event, detail }
        }
    })
}

/// The fields of a push payload that builder reads; serde ignores the rest.
#[derive(Deserialize)]
struct PushPayload {
    #[serde(rename = "ref")]
    full_ref: String,
    before: String,
    after: String,
    created: bool,
    deleted: bool,
    forced: bool,
    repository: RepositoryPayload,
    head_commit: Option<HeadCommit>,
}

#[derive(Deserialize)]
struct RepositoryPayload {
    owner: OwnerPayload,
    name: String,
    full_name: String,
    clone_url: String,
}

/// Push payloads name the owner by `name` as well as `login`; other events by `login` only.
#[derive(Deserialize)]
struct OwnerPayload {
    login: Option<String>,
    name: Option<String>,
}

impl RepositoryPayload {
    fn repository(self) -> Result<Repository, String> {
        let owner = self
            .owner
            .login
            .or(self.owner.name)
            .ok_or("missing field `repository.owner.login`")?;
        Ok(Repository {
            owner,
            name: self.name,
            full_name: self.full_name,
            clone_url: self.clone_url,
        })
    }
}

/// The fields of a `pull_request` payload that builder reads.
#[derive(Deserialize)]
struct PullRequestPayload {
    action: String,
    pull_request: PullRequestFields,
    repository: RepositoryPayload,
    #[serde(default)]
    changes: Option<ChangesPayload>,
}

#[derive(Deserialize)]
struct ChangesPayload {
    base: Option<IgnoredAny>,
}

#[derive(Deserialize)]
struct PullRequestFields {
    number: u64,
    state: String,
    user: UserPayload,
    /// Older payloads lack it: their author counts as no writer.
    author_association: Option<String>,
    body: Option<String>,
    head: BranchPayload,
    base: BranchPayload,
}

#[derive(Deserialize)]
struct UserPayload {
    login: String,
}

#[derive(Deserialize)]
struct BranchPayload {
    #[serde(rename = "ref")]
    name: String,
    sha: String,
    /// `null` (or absent) once the fork it was in is deleted.
    repo: Option<HeadRepositoryPayload>,
}

#[derive(Deserialize)]
struct HeadRepositoryPayload {
    full_name: String,
    clone_url: String,
}

fn pull_request(payload: PullRequestPayload) -> Result<PullRequestEvent, String> {
    let PullRequestFields {
        number,
        state,
        user,
        author_association,
        body,
        head,
        base,
    } = payload.pull_request;
    for (field, sha) in [("head.sha", &head.sha), ("base.sha", &base.sha)] {
        // The head commit is handed to git.
        if !is_commit_sha(sha) {
            return Err(format!(
                "field `pull_request.{field}` is not a commit SHA (40 lowercase hex digits)"
            ));
        }
    }
    let (head_repository, head_repo_url) = match head.repo {
        Some(repo) => (Some(repo.full_name), repo.clone_url),
        None => (None, String::new()),
    };
    Ok(PullRequestEvent {
        action: payload.action,
        base_changed: payload
            .changes
            .is_some_and(|changes| changes.base.is_some()),
        repository: payload.repository.repository()?,
        pull_request: PullRequest {
            number,
            open: state == "open",
            author: user.login,
            author_association: author_association.unwrap_or_else(|| "NONE".into()),
            body: body.unwrap_or_default(),
            head_branch: head.name,
            head_sha: head.sha,
            head_repository,
            head_repo_url,
            base_branch: base.name,
        },
    })
}

/// The fields of an `issue_comment` payload that builder reads.
#[derive(Deserialize)]
struct CommentPayload {
    action: String,
    issue: IssuePayload,
    comment: CommentFields,
    repository: RepositoryPayload,
}

#[derive(Deserialize)]
struct IssuePayload {
    number: u64,
    /// Present (with the pull request's URLs) when the issue is a pull request.
    pull_request: Option<IgnoredAny>,
}

#[derive(Deserialize)]
struct CommentFields {
    user: UserPayload,
    author_association: String,
    body: String,
}

fn comment(payload: CommentPayload) -> Result<Comment, String> {
    Ok(Comment {
        action: payload.action,
        repository: payload.repository.repository()?,
        number: payload.issue.number,
        on_pull_request: payload.issue.pull_request.is_some(),
        author: payload.comment.user.login,
        author_association: payload.comment.author_association,
        body: payload.comment.body,
    })
}

/// The fields of a `check_run` payload that builder reads.
#[derive(Deserialize)]
struct CheckRunPayload {
    action: String,
    check_run: CheckRunFields,
    repository: RepositoryPayload,
}

#[derive(Deserialize)]
struct CheckRunFields {
    id: u64,
    /// `null` for a check run created without one.
    external_id: Option<String>,
    head_sha: String,
}

fn check_run(payload: CheckRunPayload) -> Result<CheckRunEvent, String> {
    let CheckRunFields {
        id,
        external_id,
        head_sha,
    } = payload.check_run;
    // A re-run's commit is compared with the build's, never handed to git, but a check run is
    // always of a commit: anything else is not GitHub's.
    if !is_commit_sha(&head_sha) {
        return Err(
            "field `check_run.head_sha` is not a commit SHA (40 lowercase hex digits)".into(),
        );
    }
    Ok(CheckRunEvent {
        action: payload.action,
        repository: payload.repository.repository()?,
        id,
        external_id: external_id.filter(|id| !id.is_empty()),
        head_sha,
    })
}

fn push(payload: PushPayload) -> Result<Delivery, String> {
    let head_commit_id = payload
        .head_commit
        .as_ref()
        .map(|commit| commit.id.as_str());
    for (field, sha) in [
        ("before", Some(payload.before.as_str())),
        ("after", Some(payload.after.as_str())),
        ("head_commit.id", head_commit_id),
    ] {
        // The server hands these to git: anything but a SHA could be read as an option.
        if sha.is_some_and(|sha| !is_commit_sha(sha)) {
            return Err(format!(
                "field `{field}` is not a commit SHA (40 lowercase hex digits)"
            ));
        }
    }
    let Some(git_ref) = GitRef::from_full_name(&payload.full_ref) else {
        return Ok(Delivery::PushToOtherRef {
            ref_name: payload.full_ref,
        });
    };
    Ok(Delivery::Push(Push {
        repository: payload.repository.repository()?,
        git_ref,
        before: payload.before,
        after: payload.after,
        created: payload.created,
        deleted: payload.deleted,
        forced: payload.forced,
        head_commit: payload.head_commit,
    }))
}

fn is_commit_sha(text: &str) -> bool {
    text.len() == 40 && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    const PING: &[u8] = include_bytes!("../../webhooks/github/ping/ping.json");
    const BRANCH_UPDATE: &[u8] = include_bytes!("../../webhooks/github/push/branch-update.json");
    const BRANCH_CREATED: &[u8] = include_bytes!("../../webhooks/github/push/branch-created.json");
    const BRANCH_FORCED: &[u8] = include_bytes!("../../webhooks/github/push/branch-forced.json");
    const BRANCH_DELETED: &[u8] = include_bytes!("../../webhooks/github/push/branch-deleted.json");
    const TAG_CREATED: &[u8] = include_bytes!("../../webhooks/github/push/tag-created.json");
    const TAG_DELETED: &[u8] = include_bytes!("../../webhooks/github/push/tag-deleted.json");
    const PULL_REQUEST_OPENED: &[u8] =
        include_bytes!("../../webhooks/github/pull_request/opened.json");
    const CHECK_RUN_RERUN: &[u8] =
        include_bytes!("../../webhooks/github/check_run/rerequested.json");
    const CREATE_TAG: &[u8] = include_bytes!("../../webhooks/github/create/tag.json");
    const DELETE_BRANCH: &[u8] = include_bytes!("../../webhooks/github/delete/branch.json");

    fn read_push(body: &[u8]) -> Push {
        match parse("push", body) {
            Ok(Delivery::Push(push)) => push,
            other => panic!("expected a push, got {other:?}"),
        }
    }

    /// `fixture` as JSON, changed by `change`.
    fn edited(fixture: &[u8], change: impl FnOnce(&mut Value)) -> Vec<u8> {
        let mut payload = serde_json::from_slice(fixture).unwrap();
        change(&mut payload);
        serde_json::to_vec(&payload).unwrap()
    }

    fn push_error(body: &[u8]) -> String {
        parse("push", body).unwrap_err().to_string()
    }

    #[test]
    fn signs_and_verifies_as_github_does() {
        // The example in GitHub's "Validating webhook deliveries".
        let secret = b"It's a Secret to Everybody";
        let signature = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
        assert_eq!(sign(secret, b"Hello, World!"), signature);
        assert_eq!(verify(secret, b"Hello, World!", Some(signature)), Ok(()));
        let uppercase = format!("sha256={}", signature["sha256=".len()..].to_uppercase());
        assert_eq!(verify(secret, b"Hello, World!", Some(&uppercase)), Ok(()));

        // `openssl dgst -sha256 -hmac builder-webhook-secret` over the fixture's bytes.
        let signature = "sha256=8e4e9730cc2a76df2f4f2ae52875cbe5625afedeace990c39e6b8b5d53ee2b54";
        assert_eq!(sign(b"builder-webhook-secret", BRANCH_UPDATE), signature);
        assert_eq!(
            verify(b"builder-webhook-secret", BRANCH_UPDATE, Some(signature)),
            Ok(())
        );
    }

    #[test]
    fn a_webhook_trigger_s_secret_is_the_same_or_not() {
        assert!(same_secret(b"s3cr3t", b"s3cr3t"));
        assert!(!same_secret(b"s3cr3", b"s3cr3t"));
        assert!(!same_secret(b"", b"s3cr3t"));
        assert!(!same_secret(b"S3CR3T", b"s3cr3t"));
    }

    #[test]
    fn rejects_altered_bodies_and_other_secrets() {
        let signature = sign(b"secret", BRANCH_UPDATE);
        let mut altered = BRANCH_UPDATE.to_vec();
        altered.push(b'\n');
        assert_eq!(
            verify(b"secret", &altered, Some(&signature)),
            Err(SignatureError::Mismatch)
        );
        let reformatted = edited(BRANCH_UPDATE, |_| {});
        assert_eq!(
            verify(b"secret", &reformatted, Some(&signature)),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify(b"other", BRANCH_UPDATE, Some(&signature)),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify(b"", BRANCH_UPDATE, Some(&signature)),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn rejects_missing_and_malformed_signatures() {
        assert_eq!(verify(b"secret", b"{}", None), Err(SignatureError::Missing));
        let digits = &sign(b"secret", b"{}")["sha256=".len()..];
        for header in [
            String::new(),
            "sha256=".to_string(),
            digits.to_string(),
            format!("sha1={digits}"),
            format!("SHA256={digits}"),
            format!("sha256= {digits}"),
            format!("sha256={}", &digits[1..]),
            format!("sha256={digits}0"),
            format!("sha256={}", "g".repeat(64)),
            format!("sha256=+{}", &digits[1..]),
            // 64 bytes, but not 64 digits.
            format!("sha256={}", "é".repeat(32)),
        ] {
            assert_eq!(
                verify(b"secret", b"{}", Some(&header)),
                Err(SignatureError::Malformed),
                "{header:?}"
            );
        }
        assert_eq!(
            SignatureError::Missing.to_string(),
            "no X-Hub-Signature-256 header: give the webhook on GitHub the secret builder has"
        );
    }

    #[test]
    fn reads_a_branch_update() {
        let push = read_push(BRANCH_UPDATE);
        assert_eq!(
            push,
            Push {
                repository: Repository {
                    owner: "Codertocat".into(),
                    name: "Hello-World".into(),
                    full_name: "Codertocat/Hello-World".into(),
                    clone_url: "https://github.com/Codertocat/Hello-World.git".into(),
                },
                git_ref: GitRef::Branch("master".into()),
                before: "a10867b14bb761a232cd80139fbd4c0d33264240".into(),
                after: "199eddf46df50de8d02e99bf1c5fdb4101338224".into(),
                created: false,
                deleted: false,
                forced: false,
                head_commit: Some(HeadCommit {
                    id: "199eddf46df50de8d02e99bf1c5fdb4101338224".into(),
                    message: "Update README".into(),
                }),
            }
        );
        assert!(!push.skips_ci());
        assert!(!push.is_deletion());
    }

    #[test]
    fn reads_created_forced_and_deleted_branches() {
        let created = read_push(BRANCH_CREATED);
        assert_eq!(created.git_ref, GitRef::Branch("feature-branch".into()));
        assert!(created.created && !created.is_deletion());
        assert_eq!(created.before, NULL_SHA);

        let forced = read_push(BRANCH_FORCED);
        assert!(forced.forced && !forced.created && !forced.is_deletion());
        assert_eq!(forced.repository.owner, "jessesuen");

        let deleted = read_push(BRANCH_DELETED);
        assert_eq!(deleted.git_ref, GitRef::Branch("feature-branch".into()));
        assert!(deleted.deleted && deleted.is_deletion());
        assert_eq!(deleted.after, NULL_SHA);
        assert_eq!(deleted.head_commit, None);
        assert!(!deleted.skips_ci());

        let unflagged = read_push(&edited(BRANCH_DELETED, |p| p["deleted"] = json!(false)));
        assert!(unflagged.is_deletion());
    }

    #[test]
    fn reads_tag_pushes() {
        let created = read_push(TAG_CREATED);
        assert_eq!(created.git_ref, GitRef::Tag("v0.0.1".into()));
        assert!(created.created && !created.is_deletion());
        assert_eq!(
            created.head_commit.map(|commit| commit.id),
            Some(created.after)
        );

        let deleted = read_push(TAG_DELETED);
        assert_eq!(deleted.git_ref, GitRef::Tag("v0.0.1".into()));
        assert!(deleted.is_deletion());
    }

    #[test]
    fn keeps_slashes_in_short_names() {
        let body = edited(BRANCH_UPDATE, |p| {
            p["ref"] = json!("refs/heads/feature/a/b")
        });
        assert_eq!(
            read_push(&body).git_ref,
            GitRef::Branch("feature/a/b".into())
        );
        let body = edited(TAG_CREATED, |p| {
            p["ref"] = json!("refs/tags/release/v1.2.0")
        });
        assert_eq!(
            read_push(&body).git_ref,
            GitRef::Tag("release/v1.2.0".into())
        );
    }

    #[test]
    fn pushes_to_other_refs_build_nothing() {
        for ref_name in ["refs/notes/commits", "refs/pull/1/head", "main"] {
            let body = edited(BRANCH_UPDATE, |p| p["ref"] = json!(ref_name));
            assert_eq!(
                parse("push", &body),
                Ok(Delivery::PushToOtherRef {
                    ref_name: ref_name.into()
                })
            );
        }
    }

    #[test]
    fn skips_ci_for_lowercase_markers_in_the_head_commit() {
        let with_message = |message: &str| {
            read_push(&edited(BRANCH_UPDATE, |p| {
                p["head_commit"]["message"] = json!(message)
            }))
        };
        assert!(with_message("Update README [skip ci]").skips_ci());
        assert!(with_message("[ci skip] Update README").skips_ci());
        assert!(with_message("Update README\n\nDocs only. [skip ci]").skips_ci());
        assert!(!with_message("Update README [Skip CI]").skips_ci());
        assert!(!with_message("Update README, skip ci").skips_ci());
        assert!(!with_message("Update README [skip-ci]").skips_ci());
    }

    #[test]
    fn reads_pings() {
        assert_eq!(
            parse("ping", PING),
            Ok(Delivery::Ping(Ping {
                zen: Some("Non-blocking is better than blocking.".into()),
                hook_id: Some(149673431),
            }))
        );
        assert_eq!(
            parse("ping", b"{}"),
            Ok(Delivery::Ping(Ping {
                zen: None,
                hook_id: None
            }))
        );
    }

    #[test]
    fn ignores_other_events_but_requires_json() {
        for (event, body) in [
            ("create", CREATE_TAG),
            ("delete", DELETE_BRANCH),
            ("issues", b"[]".as_slice()),
        ] {
            assert_eq!(
                parse(event, body),
                Ok(Delivery::Ignored {
                    event: event.into()
                })
            );
        }
        let form = parse("pull_request", b"payload=%7B%7D").unwrap_err();
        assert!(matches!(form, ParseError::NotJson { .. }), "{form:?}");
        assert!(
            form.to_string()
                .starts_with("pull_request payload is not JSON (expected value at line 1")
        );
        assert!(
            form.to_string()
                .ends_with("set the webhook's content type to application/json")
        );
    }

    #[test]
    fn reads_pull_requests_and_their_forks() {
        let Ok(Delivery::PullRequest(event)) = parse("pull_request", PULL_REQUEST_OPENED) else {
            panic!("a pull request");
        };
        assert_eq!(event.action, "opened");
        assert!(!event.base_changed);
        let pull_request = &event.pull_request;
        assert_eq!(pull_request.number, 1);
        assert_eq!(pull_request.head_branch, "master");
        assert_eq!(pull_request.base_branch, "bradrydzewski-patch-1");
        assert_eq!(pull_request.head_ref(), "refs/pull/1/head");
        assert!(pull_request.open && pull_request.author_is_writer());
        assert!(!pull_request.is_fork(&event.repository));

        let forked = edited(PULL_REQUEST_OPENED, |p| {
            p["action"] = json!("edited");
            p["changes"] = json!({"base": {"ref": {"from": "main"}}});
            p["pull_request"]["head"]["repo"] = Value::Null;
            p["pull_request"]["body"] = Value::Null;
            p["pull_request"]
                .as_object_mut()
                .unwrap()
                .remove("author_association");
        });
        let Ok(Delivery::PullRequest(event)) = parse("pull_request", &forked) else {
            panic!("a pull request");
        };
        assert!(event.base_changed);
        assert!(event.pull_request.is_fork(&event.repository));
        assert_eq!(event.pull_request.author_association, "NONE");
        assert_eq!(event.pull_request.body, "");

        let bad_sha = edited(PULL_REQUEST_OPENED, |p| {
            p["pull_request"]["head"]["sha"] = json!("--upload-pack=x")
        });
        assert_eq!(
            parse("pull_request", &bad_sha).unwrap_err().to_string(),
            "pull_request payload: field `pull_request.head.sha` is not a commit SHA (40 \
             lowercase hex digits)"
        );
    }

    #[test]
    fn reads_comments_and_whether_they_are_on_pull_requests() {
        let issue = br#"{"action": "created", "issue": {"number": 4},
            "comment": {"user": {"login": "x"}, "author_association": "NONE", "body": "/gcbrun"},
            "repository": {"owner": {"login": "o"}, "name": "r", "full_name": "o/r",
                           "clone_url": "https://github.com/o/r.git"}}"#;
        let Ok(Delivery::Comment(comment)) = parse("issue_comment", issue) else {
            panic!("a comment");
        };
        assert!(!comment.on_pull_request && comment.asks_for_build() && !comment.by_writer());
        let on_pull_request = edited(issue, |p| {
            p["issue"]["pull_request"] = json!({"url": "https://api.github.com/repos/o/r/pulls/4"});
            p["comment"]["author_association"] = json!("COLLABORATOR");
        });
        let Ok(Delivery::Comment(comment)) = parse("issue_comment", &on_pull_request) else {
            panic!("a comment");
        };
        assert!(comment.on_pull_request && comment.by_writer());
        assert_eq!(
            (comment.number, comment.repository.full_name.as_str()),
            (4, "o/r")
        );
        assert!(matches!(
            parse("issue_comment", b"{}"),
            Err(ParseError::Invalid { .. })
        ));
    }

    #[test]
    fn reads_a_check_run_s_re_run_with_the_id_its_app_gave_it() {
        let Ok(Delivery::CheckRun(run)) = parse("check_run", CHECK_RUN_RERUN) else {
            panic!("a check run");
        };
        // The example's app gave no external id: it names no build.
        assert!(run.is_rerun());
        assert_eq!(
            (run.id, run.external_id.as_deref(), run.head_sha.as_str()),
            (4, None, "d6fde92930d4715a2b49857d24b940956b26d2d3")
        );
        assert_eq!(run.repository.full_name, "github/hello-world");
        let ours = edited(CHECK_RUN_RERUN, |p| {
            p["check_run"]["external_id"] = json!("b-1");
            p["action"] = json!("completed");
        });
        let Ok(Delivery::CheckRun(run)) = parse("check_run", &ours) else {
            panic!("a check run");
        };
        assert_eq!(run.external_id.as_deref(), Some("b-1"));
        assert!(!run.is_rerun());
        let not_a_commit = edited(CHECK_RUN_RERUN, |p| {
            p["check_run"]["head_sha"] = json!("--upload-pack=x");
        });
        assert_eq!(
            parse("check_run", &not_a_commit).unwrap_err().to_string(),
            "check_run payload: field `check_run.head_sha` is not a commit SHA (40 lowercase \
             hex digits)"
        );
    }

    #[test]
    fn names_what_a_push_lacks_or_gets_wrong() {
        let without_ref = edited(BRANCH_UPDATE, |p| {
            p.as_object_mut().unwrap().remove("ref");
        });
        assert!(push_error(&without_ref).starts_with("push payload: missing field `ref`"));

        let without_clone_url = edited(BRANCH_UPDATE, |p| {
            p["repository"].as_object_mut().unwrap().remove("clone_url");
        });
        assert!(
            push_error(&without_clone_url).starts_with("push payload: missing field `clone_url`")
        );

        let without_owner = edited(BRANCH_UPDATE, |p| p["repository"]["owner"] = json!({}));
        assert_eq!(
            push_error(&without_owner),
            "push payload: missing field `repository.owner.login`"
        );
        let owner_by_name = edited(BRANCH_UPDATE, |p| {
            p["repository"]["owner"] = json!({"name": "Codertocat"})
        });
        assert_eq!(read_push(&owner_by_name).repository.owner, "Codertocat");

        for (field, change) in [
            ("after", json!({"after": "HEAD"})),
            ("after", json!({"after": "--upload-pack=touch /tmp/x"})),
            (
                "before",
                json!({"before": "A10867B14BB761A232CD80139FBD4C0D33264240"}),
            ),
            (
                "head_commit.id",
                json!({"head_commit": {"id": "199edd", "message": ""}}),
            ),
        ] {
            let body = edited(BRANCH_UPDATE, |p| {
                p.as_object_mut()
                    .unwrap()
                    .extend(change.as_object().unwrap().clone())
            });
            assert_eq!(
                push_error(&body),
                format!(
                    "push payload: field `{field}` is not a commit SHA (40 lowercase hex digits)"
                )
            );
        }

        let created_as_text = edited(BRANCH_UPDATE, |p| p["created"] = json!("yes"));
        let error = parse("push", &created_as_text).unwrap_err();
        assert!(matches!(error, ParseError::Invalid { .. }), "{error:?}");
        assert!(error.to_string().contains("expected a boolean"));

        let truncated = &BRANCH_UPDATE[..BRANCH_UPDATE.len() / 2];
        assert!(matches!(
            parse("push", truncated),
            Err(ParseError::NotJson { .. })
        ));
    }
}
