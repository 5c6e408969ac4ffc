//! A classic `docker build`, taken off a step's connection by [`split`](super::split): judged as
//! the route judges one, then sent on to the engine on a connection of its own. Its context moves
//! from socket to socket in the kernel on a thread of its own ([`Conduit`]), scanned for its
//! Dockerfile on the way ([`ContextScan`]); the engine's answer comes back as it is, on another.
//!
//! The head sent on is made here from the parsed one (its framing and `Connection: close`
//! written anew), and the body ends where this side's strict reading of its framing says: the
//! engine reads the same request, and no other from this connection. The step's connection is
//! closed after the answer (which says so), as the engine's is.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream as StdUnixStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use hyper::Uri;
use rustix::event::{self, PollFd, PollFlags};
use rustix::io::Errno;
use rustix::net::{self, RecvFlags};
use rustix::pipe::{self, PipeFlags, SpliceFlags};
use tokio::io::AsyncWriteExt;
use tokio::net::UnixStream;
use tokio::runtime::Handle;
use tracing::{debug, warn};

use super::context::ContextScan;
use super::framing::{Body, Malformed};
use super::split::{Head, Taken};
use super::{Denial, Proxy};

/// The pipe a build's context passes through, if the system allows one this large.
const PIPE_SIZE: usize = 1024 * 1024;
/// How much of the context gathers in the pipe before it goes on: the engine, which reads as
/// the step writes, must not wait for more.
const SEND_AT: usize = 128 * 1024;

/// Sends the build `taken` from `step` to the engine, and the engine's answer (or why there is
/// none) back; then closes the step's connection.
pub(super) async fn relay(proxy: Arc<Proxy>, step: UnixStream, taken: Taken) {
    let Taken { head, rest } = taken;
    let target = head.target.to_string();
    let prepared = async {
        let (target, scan) = proxy.classic_build(&head.target).await?;
        let engine = proxy.connect().await?;
        let pipes = Pipes::new().map_err(|e| lost("making the build's pipes", &e))?;
        Ok((request_head(&head, &target), engine, scan, pipes))
    };
    let (relayed, step) = match prepared.await {
        Err(denial) => (Err(denial), step),
        Ok((request, engine, scan, (pipes, _cancel))) => {
            // Both connections leave tokio's reactor for the relay's threads: it would wake for
            // every chunk that passes otherwise. Dropping `cancel` (a teardown drops this
            // future) ends the threads.
            let (Ok(step), Ok(engine)) = (step.into_std(), engine.into_std()) else {
                return warn!(%target, "a build's connections could not leave the reactor");
            };
            let conduit = Conduit {
                step,
                engine,
                pipes,
                queued: 0,
                held: 0,
                body: head.body,
                scan,
            };
            let relayed = tokio::task::spawn_blocking(move || conduit.relay(&request, &rest));
            let Ok((relayed, step)) = relayed.await else {
                return warn!(%target, "a build's relay failed");
            };
            let Ok(step) = UnixStream::from_std(step) else {
                return;
            };
            (relayed, step)
        }
    };
    let (mut from_step, mut to_step) = step.into_split();
    if let Err(denial) = relayed {
        match &denial {
            Denial::Engine(detail) => warn!(%target, %detail, "a build's relay failed"),
            other => debug!(%target, denial = ?other, "a build was cut short"),
        }
        let _ = to_step.write_all(&denial_response(&proxy, &denial)).await;
        let _ = to_step.shutdown().await;
        // The step may still be sending its context: it reads the answer once it is done,
        // or it would see its connection reset instead.
        let _ = tokio::io::copy(&mut from_step, &mut tokio::io::sink()).await;
    }
    let _ = to_step.shutdown().await;
}

/// The head sent to the engine: `head` at `target`, framed as it came, on a connection that
/// closes after the answer.
fn request_head(head: &Head, target: &Uri) -> Vec<u8> {
    let mut bytes = format!("POST {target} HTTP/1.1\r\n").into_bytes();
    // The engine reads a form body's fields over the query's (Go's `FormValue`): the body is
    // the context, a tar, whatever the step says. No `100 Continue` either: the first answer
    // the step sees is the build's or a refusal.
    let skipped = ["content-type", "expect"];
    for (name, value) in (head.headers.iter())
        .filter(|(name, _)| !skipped.iter().any(|s| name.eq_ignore_ascii_case(s)))
    {
        bytes.extend_from_slice(name.as_bytes());
        bytes.extend_from_slice(b": ");
        bytes.extend_from_slice(value);
        bytes.extend_from_slice(b"\r\n");
    }
    let framing = match head.body {
        Body::Chunked(_) => "Transfer-Encoding: chunked".to_string(),
        Body::Length(length) => format!("Content-Length: {length}"),
    };
    bytes.extend_from_slice(
        format!("Content-Type: application/x-tar\r\n{framing}\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    );
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

fn lost(what: &str, error: &io::Error) -> Denial {
    Denial::Engine(format!("{what}: {error}"))
}

/// The way a build's context takes to the engine: from the step's socket into a pipe and from
/// the pipe into the engine's socket. Until the Dockerfile's images are settled it is read here
/// (scanned, its last byte held back in the pipe), but for the files the scan passes over; those,
/// and all of it after, move in the kernel (`splice`), only each chunk's framing line peeked
/// at. It runs on a thread of its own (tokio's blocking pool), waiting in `poll`: a task's
/// wake-ups, chunk after chunk, cost more than the copies spared (bench/endpoint.sh).
struct Conduit {
    step: StdUnixStream,
    engine: StdUnixStream,
    pipes: Pipes,
    /// Bytes in the pipe, and how many at its end wait while the Dockerfile's images are
    /// unsettled: from the context's last byte read so far on (the engine cannot finish
    /// unpacking without it).
    queued: usize,
    held: usize,
    body: Body,
    scan: ContextScan,
}

/// The pipe the context passes through, and the end of one that says the relay is over.
struct Pipes {
    from_pipe: OwnedFd,
    into_pipe: OwnedFd,
    capacity: usize,
    /// Hangs up once its other end, the relay's `cancel`, is dropped.
    cancelled: OwnedFd,
}

impl Pipes {
    /// The pipes, and `cancel`.
    fn new() -> io::Result<(Self, OwnedFd)> {
        let (from_pipe, into_pipe) = pipe::pipe_with(PipeFlags::CLOEXEC | PipeFlags::NONBLOCK)?;
        // A larger pipe moves more at once; the system's limit may refuse it.
        let capacity = pipe::fcntl_setpipe_size(&into_pipe, PIPE_SIZE)
            .or_else(|_| pipe::fcntl_getpipe_size(&into_pipe))?;
        let (cancelled, cancel) = pipe::pipe_with(PipeFlags::CLOEXEC)?;
        let pipes = Self {
            from_pipe,
            into_pipe,
            capacity,
            cancelled,
        };
        Ok((pipes, cancel))
    }
}

impl Conduit {
    /// The build to the engine and its answer back: the context on this thread, the answer on
    /// another. `Err` if the step is to be told why instead (nothing of an answer was sent);
    /// the step's connection comes back either way.
    fn relay(mut self, request: &[u8], rest: &[u8]) -> (Result<(), Denial>, StdUnixStream) {
        let answered = AtomicBool::new(false);
        let clones = (
            self.engine.try_clone(),
            self.step.try_clone(),
            self.pipes.cancelled.try_clone(),
        );
        let (Ok(engine), Ok(step), Ok(cancelled)) = clones else {
            let denial = Denial::Engine("builder could not share the build's connections".into());
            return (Err(denial), self.step);
        };
        let relayed = std::thread::scope(|threads| {
            let answer = threads.spawn(|| answer(&engine, &step, cancelled.as_fd(), &answered));
            let uploaded = self.send_head(request).and_then(|()| self.upload(rest));
            match &uploaded {
                // The engine's answer says more than its connection's end.
                Err(denial) if *denial == engine_ended() => {}
                // Cut short: the engine sees its connection end (and cancels the build); the
                // answer's thread, its end.
                Err(_) => {
                    let _ = net::shutdown(&self.engine, net::Shutdown::Both);
                }
                Ok(()) => {}
            }
            let answer = answer.join().unwrap_or_else(|_| Err(engine_ended()));
            match (uploaded, answered.load(Ordering::Relaxed)) {
                (_, true) => Ok(()),
                (Err(denial), false) => Err(denial),
                (Ok(()), false) => answer.and(Err(engine_ended())),
            }
        });
        (relayed, self.step)
    }

    fn send_head(&self, request: &[u8]) -> Result<(), Denial> {
        write_all(&self.engine, request, self.pipes.cancelled.as_fd())
            .map_err(|e| lost("sending the build to the engine", &e))
    }

    /// The body to the engine, starting with `rest` (read with the head). The answer is not
    /// this side's: the engine's side stays open until it ends (its end would cancel the build).
    fn upload(&mut self, rest: &[u8]) -> Result<(), Denial> {
        self.take_in(rest)?;
        let mut buffer = vec![0; 64 * 1024];
        while !self.body.ended() {
            if self.queued >= SEND_AT.min(self.pipes.capacity / 2) {
                self.drain()?;
            }
            let settled = self.scan.settled()?;
            let unread = if settled {
                u64::MAX
            } else {
                self.scan.skippable()
            };
            if unread == 0 {
                // Until the Dockerfile's images are settled, the context is read here: scanned,
                // and its last byte kept back.
                let read = self.wait_for_step(|this| {
                    net::recv(&this.step, &mut buffer, RecvFlags::DONTWAIT).map(|(read, _)| read)
                })?;
                self.take_in(&buffer[..read])?;
                continue;
            }
            // What the scan passes over, and all once settled, passes unread: each chunk's
            // framing line, peeked, and its data with it.
            let room = self.pipes.capacity - self.queued;
            let mut framing = 0;
            let mut data = self.body.data_ahead();
            if data == 0 {
                let peeked = self.wait_for_step(|this| {
                    let flags = RecvFlags::PEEK | RecvFlags::DONTWAIT;
                    net::recv(&this.step, &mut buffer[..64], flags).map(|(read, _)| read)
                })?;
                (framing, data) = framing_then_data(&self.body, &buffer[..peeked])?;
            }
            let wanted = (framing as u64)
                .saturating_add(data.min(unread))
                .min(room as u64) as usize;
            let moved = self.splice_from_step(wanted)?;
            let framing = framing.min(moved);
            self.body
                .feed(&buffer[..framing], |_| {})
                .map_err(malformed)?;
            let data = (moved - framing) as u64;
            self.body.skip_data(data);
            self.queued += moved;
            if !settled {
                self.scan.skip(data);
                // What waited is no longer the end. Data passed over is never the context's
                // last byte before its Dockerfile is found: in a tar, end blocks follow it.
                if data > 0 {
                    self.held = 0;
                } else if self.held > 0 {
                    self.held += moved;
                }
            }
        }
        // The body is whole: its last byte waits for nothing but the images, unless the relay
        // has ended meanwhile (a teardown), when the engine must not begin.
        Handle::current().block_on(self.scan.resolved())?;
        if is_over(self.pipes.cancelled.as_fd()) {
            return Err(relay_ended());
        }
        self.send(self.queued)
    }

    /// Takes in `bytes` read here: scanned, framed, and written to the pipe, where they wait
    /// from the context's last byte on.
    fn take_in(&mut self, bytes: &[u8]) -> Result<(), Denial> {
        let mut last = None;
        let scan = &mut self.scan;
        let ended = self
            .body
            .feed(bytes, |data| {
                scan.feed(&bytes[data.clone()]);
                last = Some(data.end - 1);
            })
            .map_err(malformed)?;
        let bytes = &bytes[..ended.unwrap_or(bytes.len())];
        let waits_from = match last {
            Some(last) => {
                self.held = 0;
                last
            }
            None if self.held > 0 => 0,
            None => bytes.len(),
        };
        self.write_to_pipe(&bytes[..waits_from], false)?;
        self.write_to_pipe(&bytes[waits_from..], true)
    }

    /// `bytes` into the pipe, sending what may go meanwhile if it is full; `waiting` ones are
    /// held.
    fn write_to_pipe(&mut self, bytes: &[u8], waiting: bool) -> Result<(), Denial> {
        let mut written = 0;
        while written < bytes.len() {
            match rustix::io::write(&self.pipes.into_pipe, &bytes[written..]) {
                Ok(count) => {
                    written += count;
                    self.queued += count;
                    if waiting {
                        self.held += count;
                    }
                }
                Err(Errno::AGAIN) => {
                    if self.drain()? == 0 {
                        // Only framing waits, and only this much of it fits no pipe.
                        return Err(Denial::Invalid(
                            "the build's context: its framing after the last data is too long"
                                .into(),
                        ));
                    }
                }
                Err(e) => return Err(lost("passing the build's context on", &e.into())),
            }
        }
        Ok(())
    }

    /// Up to `count` of the step's bytes into the pipe: how many (waiting for some).
    fn splice_from_step(&mut self, count: usize) -> Result<usize, Denial> {
        self.wait_for_step(|this| {
            let flags = SpliceFlags::MOVE | SpliceFlags::NONBLOCK;
            pipe::splice(&this.step, None, &this.pipes.into_pipe, None, count, flags)
        })
    }

    /// The pipe to the engine, but what waits: how much went.
    fn drain(&mut self) -> Result<usize, Denial> {
        if self.scan.settled()? {
            self.held = 0;
        }
        let sendable = self.queued - self.held;
        self.send(sendable)?;
        Ok(sendable)
    }

    /// The pipe's first `count` bytes to the engine.
    fn send(&mut self, count: usize) -> Result<(), Denial> {
        let mut left = count;
        while left > 0 {
            let flags = SpliceFlags::MOVE | SpliceFlags::NONBLOCK;
            let moved = retry(
                &self.engine,
                PollFlags::OUT,
                self.pipes.cancelled.as_fd(),
                || pipe::splice(&self.pipes.from_pipe, None, &self.engine, None, left, flags),
            )
            .map_err(|e| lost("sending the build's context to the engine", &e))?;
            if moved == 0 {
                return Err(engine_ended());
            }
            left -= moved;
        }
        self.queued -= count;
        Ok(())
    }

    /// `attempt` on the step's socket once it has bytes, again while it would block; the pipe
    /// goes to the engine meanwhile. Ends with an error once the step's side has ended, or the
    /// engine's (the relay's end, or the engine's answer begun).
    fn wait_for_step(
        &mut self,
        mut attempt: impl FnMut(&Self) -> rustix::io::Result<usize>,
    ) -> Result<usize, Denial> {
        loop {
            match attempt(self) {
                Ok(0) => {
                    return Err(Denial::Invalid(
                        "the build's context ended before its framing did".into(),
                    ));
                }
                Ok(count) => return Ok(count),
                Err(Errno::AGAIN) => {}
                Err(e) => return Err(Denial::Invalid(format!("reading the build's context: {e}"))),
            }
            self.drain()?;
            let cancelled = self.pipes.cancelled.as_fd();
            let mut fds = [
                PollFd::new(&self.step, PollFlags::IN),
                PollFd::new(&self.engine, PollFlags::empty()),
                PollFd::new(&cancelled, PollFlags::IN),
            ];
            event::poll(&mut fds, None)
                .map_err(|e| lost("waiting for the build's context", &e.into()))?;
            if !fds[2].revents().is_empty() {
                return Err(relay_ended());
            }
            if fds[1].revents().intersects(PollFlags::HUP | PollFlags::ERR) {
                return Err(engine_ended());
            }
        }
    }
}

/// `attempt` again while it would block, once `fd` is ready for `events`; an error once the
/// relay is `cancelled`.
fn retry(
    fd: impl AsFd,
    events: PollFlags,
    cancelled: BorrowedFd<'_>,
    mut attempt: impl FnMut() -> rustix::io::Result<usize>,
) -> io::Result<usize> {
    loop {
        match attempt() {
            Err(Errno::AGAIN) => {}
            done => return done.map_err(io::Error::from),
        }
        let mut fds = [
            PollFd::new(&fd, events),
            PollFd::new(&cancelled, PollFlags::IN),
        ];
        event::poll(&mut fds, None)?;
        if !fds[1].revents().is_empty() {
            return Err(io::Error::other("the build's relay was ended"));
        }
    }
}

/// The engine's answer to the step as it comes, to its end; `answered` once it has begun.
fn answer(
    engine: &StdUnixStream,
    step: &StdUnixStream,
    cancelled: BorrowedFd<'_>,
    answered: &AtomicBool,
) -> Result<(), Denial> {
    let mut buffer = vec![0; 64 * 1024];
    loop {
        let read = retry(engine, PollFlags::IN, cancelled, || {
            rustix::io::read(engine, &mut buffer)
        })
        .map_err(|e| lost("reading the engine's answer to the build", &e))?;
        if read == 0 {
            return Ok(());
        }
        answered.store(true, Ordering::Relaxed);
        write_all(step, &buffer[..read], cancelled)
            .map_err(|e| Denial::Invalid(format!("the step's connection: {e}")))?;
    }
}

/// All of `bytes` to `stream`, waiting while it would block.
fn write_all(stream: &StdUnixStream, bytes: &[u8], cancelled: BorrowedFd<'_>) -> io::Result<()> {
    let mut written = 0;
    while written < bytes.len() {
        written += retry(stream, PollFlags::OUT, cancelled, || {
            rustix::io::write(stream, &bytes[written..])
        })?;
    }
    Ok(())
}

/// How many of `peeked`, the body's next bytes, are framing before its next data (or its end),
/// and how much data follows them.
fn framing_then_data(body: &Body, peeked: &[u8]) -> Result<(usize, u64), Denial> {
    let mut probe = body.clone();
    let mut first = None;
    let ended = probe
        .feed(peeked, |data| {
            first.get_or_insert(data.start);
        })
        .map_err(malformed)?;
    let framing = first.or(ended).unwrap_or(peeked.len());
    let mut after = body.clone();
    after.feed(&peeked[..framing], |_| {}).map_err(malformed)?;
    Ok((framing, after.data_ahead()))
}

/// Whether the relay has ended (its `cancel` dropped).
fn is_over(cancelled: BorrowedFd<'_>) -> bool {
    let mut fds = [PollFd::new(&cancelled, PollFlags::IN)];
    let zero = rustix::event::Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    event::poll(&mut fds, Some(&zero)).map_or(true, |ready| ready > 0)
}

fn relay_ended() -> Denial {
    Denial::Engine("the build's relay was ended".into())
}

fn engine_ended() -> Denial {
    Denial::Engine("the engine's connection ended".into())
}

fn malformed(malformed: Malformed) -> Denial {
    Denial::Invalid(format!("the build's context: {}", malformed.0))
}
