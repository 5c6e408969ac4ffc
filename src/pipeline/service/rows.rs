//! The store's rows as the API's JSON (`core::wire`): the service answers with these, so the API,
//! its client and the console never see a row.

use std::time::SystemTime;

use crate::adapters::runtime::LogStream;
use crate::adapters::store::{
    BuildRecord, DeliveryRecord, LogLine, NotificationRecord, ReportRecord, SkippedRun, StepRecord,
    WorkerRecord,
};
use crate::core::wire;

impl From<BuildRecord> for wire::Build {
    fn from(build: BuildRecord) -> Self {
        Self {
            id: build.id,
            status: build.status,
            create_time: build.create_time,
            start_time: build.start_time,
            finish_time: build.finish_time,
            trigger: build.trigger,
            schedule: build.schedule,
            source: build.source,
            substitutions: build.substitutions,
            plan: build.plan,
            images: build.images,
            templates: build.templates,
            failure: build.failure,
            steps: build.steps.into_iter().map(wire::Step::from).collect(),
            build_step_outputs: build.build_step_outputs,
            approval: build.approval,
            waiting_for: None,
            github: None,
        }
    }
}

impl wire::Worker {
    /// A worker as the store has it, live or not at `now`.
    pub(super) fn at(worker: WorkerRecord, now: SystemTime) -> Self {
        Self {
            live: worker.live(now),
            id: worker.id,
            host: worker.host,
            pool: worker.pool,
            capacity: worker.capacity,
            builds: worker.builds,
            start_time: worker.start_time,
            last_heartbeat: worker.heartbeat,
        }
    }
}

impl wire::Notification {
    /// A notification as the store has it, with its attempts (when, and why each failed).
    pub(super) fn with_history(
        notification: NotificationRecord,
        attempts: Vec<(SystemTime, Option<String>)>,
    ) -> Self {
        Self {
            id: notification.id,
            build_id: notification.build_id,
            status: notification.status,
            notifier: notification.notifier,
            create_time: notification.create_time,
            attempts: notification.attempts,
            delivered: notification.delivered,
            done: notification.done,
            error: notification.error,
            next_attempt: notification.next_attempt,
            history: attempts
                .into_iter()
                .map(|(time, error)| wire::NotificationAttempt { time, error })
                .collect(),
        }
    }
}

impl From<ReportRecord> for wire::GithubReport {
    fn from(report: ReportRecord) -> Self {
        Self {
            reported: report.reported,
            failure: report
                .failure
                .map(|(status, attempts, error, lasting)| wire::ReportFailure {
                    status,
                    attempts,
                    error,
                    lasting,
                }),
        }
    }
}

impl From<StepRecord> for wire::Step {
    fn from(step: StepRecord) -> Self {
        Self {
            index: step.index,
            id: step.id,
            name: step.name,
            result: step.result,
        }
    }
}

impl From<LogLine> for wire::LogLine {
    fn from(line: LogLine) -> Self {
        Self {
            seq: line.seq,
            step: line.step,
            stream: match line.stream {
                LogStream::Stdout => wire::Stream::Stdout,
                LogStream::Stderr => wire::Stream::Stderr,
            },
            text: line.text,
        }
    }
}

impl From<DeliveryRecord> for wire::Delivery {
    fn from(delivery: DeliveryRecord) -> Self {
        Self {
            id: delivery.id,
            event: delivery.event,
            receive_time: delivery.receive_time,
            verified: delivery.verified,
            summary: delivery.summary,
            pending: delivery.pending,
            results: delivery.results,
        }
    }
}

impl From<SkippedRun> for wire::SkippedRun {
    fn from(run: SkippedRun) -> Self {
        Self {
            skipped: run.skipped,
            record_time: run.record_time,
        }
    }
}
