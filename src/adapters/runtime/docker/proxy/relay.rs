//! A classic `docker build`, taken off a step's connection by [`split`](super::split): judged as
//! the route judges one, then sent on to the engine on a connection of its own. Its context goes
//! in one task, read and written in large pieces as it comes, and scanned for its Dockerfile on
//! the way ([`ContextScan`]); the engine's answer comes back as it is.
//!
//! The head sent on is made here from the parsed one (its framing and `Connection: close`
//! written anew), and the body ends where this side's strict reading of its framing says: the
//! engine reads the same request, and no other from this connection. The step's connection is
//! closed after the answer (which says so), as the engine's is.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::{Buf, BytesMut};
use hyper::Uri;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tracing::{debug, warn};

use super::context::ContextScan;
use super::framing::Body;
use super::split::{Head, Taken};
use super::{Denial, Proxy};

/// How much of the context is read from the step at once, at most.
const READ_SIZE: usize = 256 * 1024;

/// Sends the build `taken` from `step` to the engine, and the engine's answer (or why there is
/// none) back; then closes the step's connection.
pub(super) async fn relay(proxy: Arc<Proxy>, step: UnixStream, taken: Taken) {
    let Taken { head, rest } = taken;
    let target = head.target.to_string();
    let (mut from_step, mut to_step) = step.into_split();
    let answered = AtomicBool::new(false);
    let relayed = async {
        let (target, scan) = proxy.classic_build(&head.target).await?;
        let engine = proxy.connect().await?;
        let (from_engine, mut to_engine) = engine.into_split();
        to_engine
            .write_all(&request_head(&head, &target))
            .await
            .map_err(|e| lost("sending the build to the engine", &e))?;
        // The engine's side stays open until its answer ends: its end there would cancel the build.
        let upload = upload(&mut from_step, &mut to_engine, rest, head.body, scan);
        let download = download(from_engine, &mut to_step, &answered);
        tokio::pin!(download);
        tokio::select! {
            uploaded = upload => {
                uploaded?;
                download.await
            }
            downloaded = &mut download => downloaded,
        }
    };
    if let Err(denial) = relayed.await {
        match &denial {
            Denial::Engine(detail) => warn!(%target, %detail, "a build's relay failed"),
            other => debug!(%target, denial = ?other, "a build was cut short"),
        }
        // An answer begun is the engine's, about the context cut short; the step sees it end.
        if !answered.load(Ordering::Relaxed) {
            let _ = to_step.write_all(&denial_response(&proxy, &denial)).await;
            let _ = to_step.shutdown().await;
            // The step may still be sending its context: it reads the answer once it is done,
            // or it would see its connection reset instead.
            let _ = tokio::io::copy(&mut from_step, &mut tokio::io::sink()).await;
        }
    }
    let _ = to_step.shutdown().await;
}

/// The head sent to the engine: `head` at `target`, framed as it came, on a connection that
/// closes after the answer.
fn request_head(head: &Head, target: &Uri) -> Vec<u8> {
    let mut bytes = format!("POST {target} HTTP/1.1\r\n").into_bytes();
    for (name, value) in &head.headers {
        bytes.extend_from_slice(name.as_bytes());
        bytes.extend_from_slice(b": ");
        bytes.extend_from_slice(value);
        bytes.extend_from_slice(b"\r\n");
    }
    let framing = match head.body {
        Body::Chunked(_) => "Transfer-Encoding: chunked".to_string(),
        Body::Length(length) => format!("Content-Length: {length}"),
    };
    bytes.extend_from_slice(format!("{framing}\r\nConnection: close\r\n\r\n").as_bytes());
    bytes
}

/// The answer to the step for `denial`, as the route's (`Denial::response`).
fn denial_response(proxy: &Proxy, denial: &Denial) -> Vec<u8> {
    let (status, body) = denial.answer(&proxy.names);
    let body = body.to_string();
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

fn lost(what: &str, error: &std::io::Error) -> Denial {
    Denial::Engine(format!("{what}: {error}"))
}

/// The body from the step to the engine, starting with `pending` (read with the head). While
/// the Dockerfile's images are unsettled, the last byte of the context read so far (and the
/// framing after it) waits: the engine cannot finish unpacking without it.
async fn upload(
    step: &mut OwnedReadHalf,
    engine: &mut OwnedWriteHalf,
    mut pending: BytesMut,
    mut body: Body,
    mut scan: ContextScan,
) -> Result<(), Denial> {
    // `pending[..judged]` has been read for framing and scanned; `held` is where its last byte
    // of context is.
    let mut judged = 0;
    let mut held = None;
    loop {
        let new = &pending[judged..];
        let mut last = None;
        let ended = body
            .feed(new, |data| {
                scan.feed(&new[data.clone()]);
                last = Some(data.end - 1);
            })
            .map_err(|malformed| {
                Denial::Invalid(format!("the build's context: {}", malformed.0))
            })?;
        if let Some(last) = last {
            held = Some(judged + last);
        }
        if let Some(end) = ended {
            // A client's pipelined bytes after the body: this connection closes after the answer.
            pending.truncate(judged + end);
            scan.resolved().await?;
            return engine
                .write_all(&pending)
                .await
                .map_err(|e| lost("sending the build's context to the engine", &e));
        }
        judged = pending.len();
        let sendable = match (scan.settled().await?, held) {
            (false, Some(held)) => held,
            _ => judged,
        };
        engine
            .write_all(&pending[..sendable])
            .await
            .map_err(|e| lost("sending the build's context to the engine", &e))?;
        pending.advance(sendable);
        judged -= sendable;
        held = held.filter(|at| *at >= sendable).map(|at| at - sendable);
        pending.reserve(READ_SIZE);
        let read = step
            .read_buf(&mut pending)
            .await
            .map_err(|e| Denial::Invalid(format!("reading the build's context: {e}")))?;
        if read == 0 {
            return Err(Denial::Invalid(
                "the build's context ended before its framing did".into(),
            ));
        }
    }
}

/// The engine's answer to the step, as it comes, to its end; `answered` once it has begun.
async fn download(
    mut engine: OwnedReadHalf,
    step: &mut OwnedWriteHalf,
    answered: &AtomicBool,
) -> Result<(), Denial> {
    let mut buffer = vec![0; 64 * 1024];
    loop {
        let read = engine
            .read(&mut buffer)
            .await
            .map_err(|e| lost("reading the engine's answer to the build", &e))?;
        if read == 0 {
            return Ok(());
        }
        answered.store(true, Ordering::Relaxed);
        step.write_all(&buffer[..read])
            .await
            .map_err(|e| Denial::Invalid(format!("the step's connection: {e}")))?;
    }
}
