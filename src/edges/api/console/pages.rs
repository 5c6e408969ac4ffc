//! The console's pages as HTML (maud escapes every value it inserts). Parts that still change are
//! marked `data-live` with an id: `console.js` fetches the page again and swaps them until the
//! server renders them without the mark.

use std::time::SystemTime;

use chrono::{DateTime, Utc};
use maud::{DOCTYPE, Markup, html};
use serde_json::Value;

use super::{BuildFilter, Visitor, url_encode};
use crate::core::build::{Approval, ApprovalState, Status};
use crate::core::retention::Pass;
use crate::core::wire::{Build, Delivery, GithubReport, Notification, Step, Worker};
use crate::pipeline::service::ScheduleView;

mod templates;
pub(super) use templates::templates;

/// Indentation levels the steps list shows (deeper steps share the last).
const MAX_DEPTH: usize = 8;

fn layout(visitor: &Visitor, title: &str, content: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · builder" }
                link rel="stylesheet" href="/assets/console.css";
                script src="/assets/console.js" defer {}
            }
            body {
                nav {
                    a.brand href="/" { "builder" }
                    a href="/" { "Builds" }
                    a href="/triggers" { "Triggers" }
                    a href="/schedules" { "Schedules" }
                    a href="/deliveries" { "Deliveries" }
                    a href="/workers" { "Workers" }
                    a href="/notifications" { "Notifications" }
                    a href="/templates" { "Templates" }
                    span.spacer {}
                    @if visitor.logged_in {
                        form.inline method="post" action="/logout" {
                            button.link type="submit" { "Log out" }
                        }
                    } @else {
                        a href={ "/login?next=" (url_encode(&visitor.path)) } { "Log in" }
                    }
                }
                main { h1 { (title) } (content) }
            }
        }
    }
}

pub(super) fn problem(visitor: &Visitor, message: &str) -> Markup {
    layout(
        visitor,
        "Something went wrong",
        html! { p.error { (message) } p { a href=(visitor.path) { "Back" } } },
    )
}

pub(super) fn login(visitor: &Visitor, error: Option<&str>) -> Markup {
    let content = html! {
        @if let Some(error) = error { p.error { (error) } }
        p { "Actions (cancel, retry, run) need the server's API token." }
        form.login method="post" action="/login" {
            input type="hidden" name="next" value=(visitor.path);
            label { "API token " input type="password" name="token" autocomplete="current-password" required; }
            button type="submit" { "Log in" }
        }
    };
    layout(visitor, "Log in", content)
}

fn status_badge(status: Status) -> Markup {
    html! { span class={ "status " (status.as_str().to_lowercase()) } { (status.as_str()) } }
}

fn time(at: SystemTime) -> Markup {
    let at = DateTime::<Utc>::from(at);
    html! { time datetime=(at.to_rfc3339()) { (at.format("%Y-%m-%d %H:%M:%S")) } }
}

fn optional_time(at: Option<SystemTime>) -> Markup {
    html! { @if let Some(at) = at { (time(at)) } @else { "—" } }
}

/// From `start` to `end`, or to now while it runs.
fn duration(start: Option<SystemTime>, end: Option<SystemTime>) -> String {
    let Some(start) = start else {
        return String::new();
    };
    let end = end.unwrap_or_else(SystemTime::now);
    let seconds = end.duration_since(start).unwrap_or_default().as_secs_f64();
    match seconds {
        s if s < 60.0 => format!("{s:.1}s"),
        s if s < 3600.0 => format!("{}m {:02}s", (s / 60.0) as u64, s as u64 % 60),
        s => format!("{}h {:02}m", (s / 3600.0) as u64, (s as u64 % 3600) / 60),
    }
}

fn text<'v>(value: &'v Value, key: &str) -> &'v str {
    value[key].as_str().unwrap_or_default()
}

/// A build's substitution, empty if it has none of that name.
fn substitution<'b>(build: &'b Build, key: &str) -> &'b str {
    build.substitutions.get(key).map_or("", String::as_str)
}

fn short(commit: &str) -> &str {
    // Seven characters, not bytes: a schedule's `commit` is whatever its file says.
    let end = commit
        .char_indices()
        .nth(7)
        .map_or(commit.len(), |(at, _)| at);
    &commit[..end]
}

/// What started a build: its schedule, its trigger, or a person (`builder submit`).
fn origin(build: &Build) -> Markup {
    html! {
        @if let Some(schedule) = &build.schedule {
            "schedule " a href={ "/schedules/" (url_encode(schedule)) } { (schedule) }
        } @else if let Some(trigger) = &build.trigger {
            "trigger " a href={ "/triggers/" (url_encode(trigger)) } { (trigger) }
        } @else {
            "manual"
        }
    }
}

/// The branch or tag a build built; for a pull request's, `#N head → base`.
fn reference(build: &Build) -> Markup {
    let (branch, tag) = (
        substitution(build, "BRANCH_NAME"),
        substitution(build, "TAG_NAME"),
    );
    let pull_request = &build.source["pullRequest"];
    html! {
        @if let Some(number) = pull_request["number"].as_u64() {
            span.pull-request {
                "#" (number) " " span.branch { (text(pull_request, "headBranch")) }
                " → " span.branch { (text(pull_request, "baseBranch")) }
            }
        }
        @else if !branch.is_empty() { span.branch { (branch) } }
        @else if !tag.is_empty() { "tag " span.tag { (tag) } }
    }
}

fn repository(build: &Build) -> &str {
    match text(&build.source, "kind") {
        "github" => text(&build.source, "repository"),
        "upload" => "upload",
        _ => "",
    }
}

/// Whether a list of builds is refreshed: while any runs, or always if `newest` (new builds show
/// up).
fn live(builds: &[Build], newest: bool) -> bool {
    newest || builds.iter().any(|b| !b.status.is_final())
}

fn builds_table(builds: &[Build]) -> Markup {
    html! {
        table.builds {
            thead { tr {
                th { "Status" } th { "Build" } th { "Started by" } th { "Repository" }
                th { "Branch or tag" } th { "Commit" } th { "Started" } th { "Duration" }
            } }
            tbody {
                @for build in builds {
                    tr {
                        td { (status_badge(build.status)) }
                        td.id { a href={ "/builds/" (build.id) } { (short(&build.id)) } }
                        td { (origin(build)) }
                        td { (repository(build)) }
                        td { (reference(build)) }
                        td.commit { (short(text(&build.source, "commit"))) }
                        td { (optional_time(build.start_time)) }
                        td { (duration(build.start_time, build.finish_time)) }
                    }
                }
                @if builds.is_empty() { tr { td.empty colspan="8" { "No builds." } } }
            }
        }
    }
}

pub(super) fn builds(
    visitor: &Visitor,
    filter: &BuildFilter,
    triggers: &[String],
    builds: &[Build],
    older: Option<String>,
) -> Markup {
    let content = html! {
        form.filters method="get" action="/" {
            label { "Status " select name="status" {
                option value="" { "any" }
                @for status in Status::ALL {
                    option value=(status.as_str()) selected[filter.status == status.as_str()] {
                        (status.as_str())
                    }
                }
            } }
            label { "Trigger " select name="trigger" {
                option value="" { "any" }
                @for trigger in triggers {
                    option value=(trigger) selected[&filter.trigger == trigger] { (trigger) }
                }
            } }
            label { "Branch " input type="text" name="branch" value=(filter.branch); }
            button type="submit" { "Filter" }
        }
        // The paging links are refreshed with the list they page.
        div id="builds" data-live[live(builds, filter.before.is_empty())] {
            (builds_table(builds))
            nav.pages {
                @if !filter.before.is_empty() { a href=(filter.link(None)) { "← Newest" } }
                @if let Some(older) = older { a href=(older) { "Older →" } }
            }
        }
    };
    layout(visitor, "Builds", content)
}

/// The steps' depths in the `waitFor` graph: 0 for a step that waits for nothing, else one more
/// than the deepest step it waits for.
fn depths(dependencies: &[Vec<usize>]) -> Vec<usize> {
    let mut depths: Vec<usize> = Vec::with_capacity(dependencies.len());
    for waits in dependencies {
        let depth = waits
            .iter()
            .filter_map(|&d| depths.get(d))
            .map(|d| d + 1)
            .max();
        depths.push(depth.unwrap_or(0));
    }
    depths
}

fn step_label(step: &Step) -> String {
    match &step.id {
        Some(id) => id.clone(),
        None => format!("#{}", step.index),
    }
}

/// What a step waited for, in words.
fn waits_for(index: usize, waits: &[usize], steps: &[Step]) -> String {
    if waits.is_empty() {
        return "starts at once".into();
    }
    if index > 0 && waits.iter().copied().eq(0..index) {
        return "after every step before it".into();
    }
    let labels: Vec<String> = waits
        .iter()
        .filter_map(|&d| steps.get(d))
        .map(step_label)
        .collect();
    format!("after {}", labels.join(", "))
}

/// What GitHub was told of a build: the status it shows, and a report that failed.
fn github_report(report: &GithubReport) -> Markup {
    html! {
        @match report.reported {
            Some(status) => { "reported " (status_badge(status)) }
            None => { "not reported yet" }
        }
        @if let Some(failure) = &report.failure {
            p.error {
                "Reporting " (failure.status) " failed"
                @if failure.lasting { " (given up after " (failure.attempts) " attempts)" }
                @else { " (attempt " (failure.attempts) ", trying again)" }
                ": " (failure.error)
            }
        }
    }
}

/// A build's approval: its state, and who decided what, when and why.
fn approval_of(approval: &Approval) -> Markup {
    html! {
        @match &approval.result {
            Some(result) => {
                (approval.state.as_str()) " by " (result.approver_account) " at " (time(result.approval_time))
                @if let Some(comment) = &result.comment { ": " q { (comment) } }
            }
            None if approval.state == ApprovalState::Pending => {
                "PENDING: anyone with the API token may approve"
            }
            None => { (approval.state.as_str()) }
        }
    }
}

pub(super) fn build(visitor: &Visitor, build: &Build) -> Markup {
    let plan_steps = build.plan["steps"].as_array();
    let dependencies: Vec<Vec<usize>> = build
        .steps
        .iter()
        .map(|step| {
            let waits = plan_steps
                .and_then(|s| s.get(step.index))
                .map(|s| &s["dependencies"]);
            waits
                .and_then(Value::as_array)
                .map(|w| {
                    w.iter()
                        .filter_map(Value::as_u64)
                        .map(|d| d as usize)
                        .collect()
                })
                .unwrap_or_default()
        })
        .collect();
    let depths = depths(&dependencies);
    let running = !build.status.is_final();
    let content = html! {
        section.summary id="summary" data-live[running] {
            p { (status_badge(build.status)) " " code { (build.id) } }
            @if let Some(failure) = &build.failure { p.error { (failure) } }
            dl {
                dt { "Started by" } dd { (origin(build)) }
                @if !repository(build).is_empty() { dt { "Repository" } dd { (repository(build)) } }
                @if build.source["pullRequest"].is_object() {
                    dt { "Pull request" } dd { (reference(build)) }
                } @else if !substitution(build, "BRANCH_NAME").is_empty() || !substitution(build, "TAG_NAME").is_empty() {
                    dt { "Branch or tag" } dd { (reference(build)) }
                }
                @if let Some(commit) = build.source["commit"].as_str() { dt { "Commit" } dd.commit { (commit) } }
                dt { "Created" } dd { (time(build.create_time)) }
                dt { "Started" } dd { (optional_time(build.start_time)) }
                dt { "Finished" } dd { (optional_time(build.finish_time)) }
                dt { "Duration" } dd { (duration(build.start_time, build.finish_time)) }
                @if let Some(github) = &build.github { dt { "On GitHub" } dd #github { (github_report(github)) } }
                @if let Some(approval) = &build.approval { dt { "Approval" } dd #approval { (approval_of(approval)) } }
                @if let Some(waiting) = &build.waiting_for { dt { "Waiting" } dd #waiting { (waiting) } }
            }
            div.actions {
                // A pending build's actions are outside this live part: a refresh would wipe a
                // comment being typed.
                @if running && build.status != Status::Pending {
                    form method="post" action={ "/builds/" (build.id) "/cancel" } {
                        button.danger type="submit" id="cancel" { "Cancel" }
                    }
                } @else if !running {
                    form method="post" action={ "/builds/" (build.id) "/retry" } {
                        button type="submit" id="retry" { "Retry" }
                    }
                }
            }
        }
        @if build.status == Status::Pending {
            section.approve id="decide" {
                h2 { "Approval" }
                p { "This build waits for approval before it is queued. Anyone with the server's API token may approve or reject it." }
                form.decide method="post" action={ "/builds/" (build.id) "/approve" } {
                    label { "Comment " input type="text" name="comment"; }
                    button type="submit" id="approve" { "Approve" }
                    button.danger type="submit" id="reject" formaction={ "/builds/" (build.id) "/reject" } { "Reject" }
                }
                form method="post" action={ "/builds/" (build.id) "/cancel" } {
                    button.danger type="submit" id="cancel" { "Cancel" }
                }
            }
        }
        h2 { "Steps" }
        ol.steps id="steps" data-live[running] {
            @for (step, (waits, depth)) in build.steps.iter().zip(dependencies.iter().zip(&depths)) {
                li class={ "step depth-" (depth.min(&MAX_DEPTH)) } {
                    (status_badge(step.result.status))
                    " " strong { (step_label(step)) } " " code { (step.name) }
                    span.waits { (waits_for(step.index, waits, &build.steps)) }
                    span.timing {
                        (duration(step.result.start_time, step.result.end_time))
                        @if let Some(code) = step.result.exit_code { " · exit " (code) }
                    }
                    @if let Some(detail) = &step.result.detail { div.detail { (detail) } }
                }
            }
        }
        @let outputs: Vec<_> = build.steps.iter()
            .filter_map(|step| Some((step, step.result.output.as_deref()?)))
            .collect();
        @if !build.images.is_empty() || !build.templates.is_empty() || !outputs.is_empty() {
            h2 { "Results" }
            table.results {
                @for image in &build.images {
                    tr {
                        td { "image" }
                        td {
                            code { (image.name) }
                            @if let Some(place) = &image.pushed_to { " (pushed to " code { (place) } ")" }
                        }
                        td.digest { (image.digest) }
                    }
                }
                @for (step, output) in &outputs {
                    tr {
                        td { "output of " (step_label(step)) }
                        td colspan="2" { pre.output { (String::from_utf8_lossy(output)) } }
                    }
                }
                @for template in &build.templates {
                    tr {
                        td { "template" }
                        td { code { (template.repository) ":" (template.version) } " (" (template.file) ")" }
                        td.digest { (template.digest) }
                    }
                }
            }
        }
        h2 { "Logs" }
        section.logs id="logs" data-log={ "/v1/builds/" (build.id) "/log?follow=true&batched=true" } {
            @for step in &build.steps {
                details.log open data-step=(step.index) {
                    summary { (step_label(step)) " " code { (step.name) } }
                    pre id={ "log-" (step.index) } {}
                }
            }
        }
        @if !build.substitutions.is_empty() {
            h2 { "Substitutions" }
            table.substitutions {
                @for (key, value) in &build.substitutions {
                    tr { td { code { (key) } } td { (value) } }
                }
            }
        }
    };
    layout(visitor, &format!("Build {}", short(&build.id)), content)
}

pub(super) fn triggers(visitor: &Visitor, triggers: &[Value]) -> Markup {
    let content = html! {
        table {
            thead { tr { th { "Trigger" } th { "Fires on" } th { "Config" } } }
            tbody {
                @for trigger in triggers {
                    tr {
                        td { a href={ "/triggers/" (url_encode(text(trigger, "name"))) } { (text(trigger, "name")) }
                             @if trigger["disabled"] == true { " " span.status.cancelled { "DISABLED" } } }
                        td { (text(trigger, "rule")) }
                        td { code { (text(trigger, "config")) } }
                    }
                }
                @if triggers.is_empty() { tr { td.empty colspan="3" { "No triggers." } } }
            }
        }
    };
    layout(visitor, "Triggers", content)
}

pub(super) fn trigger(visitor: &Visitor, trigger: &Value, builds: &[Build]) -> Markup {
    let name = text(trigger, "name");
    let content = html! {
        @if !text(trigger, "description").is_empty() { p { (text(trigger, "description")) } }
        dl {
            dt { "Fires on" } dd { (text(trigger, "rule")) }
            dt { "Config" } dd { code { (text(trigger, "config")) } }
            @if trigger["disabled"] == true { dt { "Disabled" } dd { "yes: pushes do not fire it; runs by hand still do" } }
            @if let Some(substitutions) = trigger["substitutions"].as_object().filter(|s| !s.is_empty()) {
                dt { "Substitutions" }
                dd { @for (key, value) in substitutions { code { (key) "=" (value.as_str().unwrap_or_default()) } " " } }
            }
        }
        h2 { "Run" }
        form.run method="post" action={ "/triggers/" (url_encode(name)) "/run" } {
            select name="kind" {
                option value="branch" { "branch" }
                option value="tag" { "tag" }
                option value="commit" { "commit" }
            }
            input type="text" name="value" placeholder="main" required;
            textarea name="substitutions" rows="3" placeholder="_KEY=value, one per line" {}
            button type="submit" { "Run" }
        }
        h2 { "Recent builds" }
        div id="builds" data-live[live(builds, true)] { (builds_table(builds)) }
        p { a href={ "/?trigger=" (url_encode(name)) } { "All builds of this trigger" } }
    };
    layout(visitor, &format!("Trigger {name}"), content)
}

fn target(view: &ScheduleView) -> String {
    use crate::core::schedule::Target;
    match &view.schedule.target {
        Target::Branch(branch) => format!("branch {branch}"),
        Target::Tag(tag) => format!("tag {tag}"),
        Target::Commit(commit) => format!("commit {}", short(commit)),
    }
}

fn schedule_state(view: &ScheduleView) -> Markup {
    html! {
        @if view.schedule.suspend { span.status.cancelled { "SUSPENDED" } }
        @else if view.paused { span.status.cancelled { "PAUSED" } }
        @else { span.status.success { "ACTIVE" } }
    }
}

fn last_run(view: &ScheduleView) -> Markup {
    html! {
        @if let Some(last) = &view.last_run {
            (last.run.scheduled_time.format("%Y-%m-%d %H:%M UTC")) " "
            a href={ "/builds/" (last.run.build) } { (short(&last.run.build)) } " "
            @if let Some(status) = last.status { (status_badge(status)) }
        } @else { "never" }
    }
}

pub(super) fn schedules(visitor: &Visitor, schedules: &[ScheduleView]) -> Markup {
    let content = html! {
        table {
            thead { tr {
                th { "Schedule" } th { "When" } th { "Runs" } th { "State" } th { "Next run" } th { "Last run" }
            } }
            tbody {
                @for view in schedules {
                    tr {
                        td { a href={ "/schedules/" (url_encode(&view.schedule.name)) } { (view.schedule.name) } }
                        td { code { (view.schedule.cron) } " " (view.schedule.time_zone) }
                        td { "trigger " (view.schedule.trigger) " on " (target(view)) }
                        td { (schedule_state(view)) }
                        td { (view.next_run.local) }
                        td { (last_run(view)) }
                    }
                }
                @if schedules.is_empty() { tr { td.empty colspan="6" { "No schedules." } } }
            }
        }
    };
    layout(visitor, "Schedules", content)
}

pub(super) fn schedule(visitor: &Visitor, view: &ScheduleView) -> Markup {
    let name = url_encode(&view.schedule.name);
    let content = html! {
        @if !view.schedule.description.is_empty() { p { (view.schedule.description) } }
        dl {
            dt { "When" } dd { code { (view.schedule.cron) } " in " (view.schedule.time_zone) }
            dt { "Runs" } dd { "trigger " a href={ "/triggers/" (url_encode(&view.schedule.trigger)) } { (view.schedule.trigger) } " on " (target(view)) }
            dt { "State" } dd { (schedule_state(view)) }
            dt { "Next run" } dd { (view.next_run.local) " (" (view.next_run.utc) ")" }
            dt { "Last run" } dd { (last_run(view)) }
            @if let Some(error) = &view.last_error { dt { "Last error" } dd.error { (error) } }
        }
        div.actions {
            @if view.paused {
                form method="post" action={ "/schedules/" (name) "/resume" } { button type="submit" { "Resume" } }
            } @else {
                form method="post" action={ "/schedules/" (name) "/pause" } { button type="submit" { "Pause" } }
            }
            form method="post" action={ "/schedules/" (name) "/run" } { button type="submit" { "Run now" } }
        }
        h2 { "Skipped runs" }
        table {
            thead { tr { th { "Runs" } th { "Scheduled from" } th { "to" } th { "Why" } } }
            tbody {
                @for skipped in view.skipped_runs.iter().flatten() {
                    tr {
                        td { (skipped.skipped.count) }
                        td { (skipped.skipped.first.format("%Y-%m-%d %H:%M UTC")) }
                        td { (skipped.skipped.last.format("%Y-%m-%d %H:%M UTC")) }
                        td { (skipped.skipped.reason) }
                    }
                }
                @if view.skipped_runs.as_ref().is_none_or(Vec::is_empty) { tr { td.empty colspan="4" { "None." } } }
            }
        }
    };
    layout(
        visitor,
        &format!("Schedule {}", view.schedule.name),
        content,
    )
}

pub(super) fn deliveries(visitor: &Visitor, deliveries: &[Delivery], passes: &[Pass]) -> Markup {
    let content = html! {
        p { "The newest webhook deliveries, and what each trigger made of them." }
        table.deliveries {
            thead { tr { th { "Received" } th { "Event" } th { "Delivery" } th { "Verified" } th { "What it was and what it started" } } }
            tbody {
                @for delivery in deliveries {
                    tr {
                        td { (time(delivery.receive_time)) }
                        td { (delivery.event) }
                        td.id { (delivery.id) }
                        td { @if delivery.verified { "yes" } @else { span.status.failure { "REJECTED" } } }
                        td {
                            p { (delivery.summary) }
                            @if delivery.pending { p { "Triggers with file filters are still deciding." } }
                            @if delivery.verified && !delivery.pending && delivery.results.iter().all(|r| r.build_id.is_none()) {
                                p.error { "No trigger fired." }
                            }
                            ul.results {
                                @for result in &delivery.results {
                                    li {
                                        a href={ "/triggers/" (url_encode(&result.trigger)) } { (result.trigger) } ": "
                                        @if let Some(build) = &result.build_id {
                                            "started " a href={ "/builds/" (build) } { (short(build)) }
                                        } @else if let Some(reason) = &result.reason {
                                            "did not fire: " (reason)
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
                @if deliveries.is_empty() { tr { td.empty colspan="5" { "No deliveries yet." } } }
            }
        }
        (retention(passes))
    };
    layout(visitor, "Deliveries", content)
}

pub(super) fn workers(visitor: &Visitor, workers: &[Worker]) -> Markup {
    let content = html! {
        p { "The processes that run builds: each beats while it runs; one that stopped beating within its lease died, and is listed for a day." }
        table.workers {
            thead { tr { th { "Worker" } th { "Host" } th { "Pool" } th { "Capacity" } th { "Builds" } th { "Last heartbeat" } th { "Live" } } }
            tbody {
                @for worker in workers {
                    tr {
                        td.id { (worker.id) }
                        td { (worker.host) }
                        td { (worker.pool.as_deref().unwrap_or("default")) }
                        td { (worker.capacity) }
                        td {
                            @for build in &worker.builds {
                                a href={ "/builds/" (build) } { (short(build)) } " "
                            }
                            @if worker.builds.is_empty() { "—" }
                        }
                        td { (time(worker.last_heartbeat)) }
                        td { @if worker.live { "yes" } @else { span.status.failure { "NOT LIVE" } } }
                    }
                }
                @if workers.is_empty() { tr { td.empty colspan="7" { "No worker is running." } } }
            }
        }
    };
    layout(visitor, "Workers", content)
}

/// The newest notifications of builds' statuses, each with what became of it; refreshed while
/// some are still being sent.
pub(super) fn notifications(visitor: &Visitor, notifications: &[Notification]) -> Markup {
    let sending = notifications.iter().any(|n| !n.done);
    let content = html! {
        p { "Each status a build took, told to the notifiers whose filters selected it (" code { "serve --notifications" } "), newest first." }
        div id="notifications" data-live[sending] {
            table.notifications {
                thead { tr { th { "Time" } th { "Build" } th { "Status" } th { "Notifier" } th { "Result" } th { "Attempts" } th { "Last error" } } }
                tbody {
                    @for notification in notifications {
                        tr {
                            td { (time(notification.create_time)) }
                            td { a href={ "/builds/" (notification.build_id) } { (short(&notification.build_id)) } }
                            td { (status_badge(notification.status)) }
                            td { (notification.notifier) }
                            td.result { (notification_result(notification)) }
                            td { (notification.attempts) }
                            td {
                                @if let Some(error) = last_error(notification) { span.error { (error) } } @else { "—" }
                            }
                        }
                    }
                    @if notifications.is_empty() { tr { td.empty colspan="7" { "No notifications yet." } } }
                }
            }
        }
    };
    layout(visitor, "Notifications", content)
}

/// What became of a notification, in words.
fn notification_result(notification: &Notification) -> Markup {
    html! {
        @if notification.delivered {
            "delivered"
        } @else if !notification.done {
            @if notification.attempts == 0 { "sending" } @else { "retrying at " (optional_time(notification.next_attempt)) }
        } @else if notification.attempts == 0 {
            span.error { "never sent" }
        } @else {
            span.error { "given up" }
        }
    }
}

/// Why it was never sent, or its last failed attempt's error (kept for one delivered after it).
fn last_error(notification: &Notification) -> Option<&str> {
    notification.error.as_deref().or_else(|| {
        notification
            .history
            .iter()
            .rev()
            .find_map(|attempt| attempt.error.as_deref())
    })
}

/// What the newest retention passes removed (`builder serve --retain-days`).
fn retention(passes: &[Pass]) -> Markup {
    html! {
        h2 { "Retention" }
        p { "What the newest retention passes removed: old builds and deliveries, and uploads, workspaces and git mirrors nothing needs." }
        table.retention {
            thead { tr { th { "Finished" } th { "Took" } th { "Builds" } th { "Deliveries" } th { "Uploads" } th { "Workspaces" } th { "Mirrors" } th { "Stopped by" } } }
            tbody {
                @for pass in passes {
                    tr {
                        td { (time(pass.finished)) }
                        td { (format!("{:.1}s", pass.took.as_secs_f64())) }
                        td { (pass.removed.builds) }
                        td { (pass.removed.deliveries) }
                        td { (pass.removed.uploads) }
                        td { (pass.removed.workspaces) }
                        td { (pass.removed.mirrors) }
                        td { @if let Some(error) = &pass.error { span.error { (error) } } @else { "—" } }
                    }
                }
                @if passes.is_empty() { tr { td.empty colspan="8" { "No retention pass yet." } } }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn depth_is_one_more_than_the_deepest_step_waited_for() {
        // 0 and 1 start at once, 2 waits for 0, 3 for 1 and 2.
        assert_eq!(depths(&[vec![], vec![], vec![0], vec![1, 2]]), [0, 0, 1, 2]);
    }

    #[test]
    fn a_commit_is_shortened_to_seven_characters_not_bytes() {
        assert_eq!(short("0123456789abcdef"), "0123456");
        assert_eq!(short("héllo wörld"), "héllo w");
        assert_eq!(short("ééé"), "ééé");
    }

    #[test]
    fn pull_request_builds_read_number_head_and_base() {
        let build: Build = serde_json::from_value(serde_json::json!({
            "id": "b", "status": "QUEUED", "createTime": "2026-01-01T00:00:00Z",
            "trigger": "prs", "plan": null, "images": [], "failure": null, "steps": [],
            "source": {"kind": "github", "repository": "acme/app", "commit": "c",
                       "pullRequest": {"number": 7, "headBranch": "fix<b>", "baseBranch": "main"}},
            "substitutions": {"BRANCH_NAME": "fix<b>"},
        }))
        .unwrap();
        let shown = reference(&build).into_string();
        assert_eq!(
            shown,
            "<span class=\"pull-request\">#7 <span class=\"branch\">fix&lt;b&gt;</span> → \
             <span class=\"branch\">main</span></span>"
        );
    }

    #[test]
    fn durations_read_like_a_clock() {
        let start = SystemTime::UNIX_EPOCH;
        let after = |s| Some(start + std::time::Duration::from_secs_f64(s));
        assert_eq!(duration(Some(start), after(2.25)), "2.2s");
        assert_eq!(duration(Some(start), after(125.0)), "2m 05s");
        assert_eq!(duration(Some(start), after(7260.0)), "2h 01m");
        assert_eq!(duration(None, None), "");
    }

    #[test]
    fn a_notification_reads_delivered_retrying_given_up_or_never_sent() {
        let at = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(60);
        let failed = |error: &str| crate::core::wire::NotificationAttempt {
            time: at,
            error: Some(error.into()),
        };
        let sending = Notification {
            id: 1,
            build_id: "b".into(),
            status: Status::Success,
            notifier: "hook".into(),
            create_time: at,
            attempts: 0,
            delivered: false,
            done: false,
            error: None,
            next_attempt: Some(at),
            history: vec![],
        };
        let read = |n: &Notification| {
            (
                notification_result(n).into_string(),
                last_error(n).map(str::to_string),
            )
        };
        assert_eq!(read(&sending), ("sending".into(), None));
        let retrying = Notification {
            attempts: 1,
            error: Some("the target answered 500".into()),
            history: vec![failed("the target answered 500")],
            ..sending.clone()
        };
        assert_eq!(
            read(&retrying),
            (
                "retrying at <time datetime=\"1970-01-01T00:01:00+00:00\">1970-01-01 00:01:00</time>"
                    .into(),
                Some("the target answered 500".into())
            )
        );
        let delivered = Notification {
            attempts: 2,
            delivered: true,
            done: true,
            error: None,
            next_attempt: None,
            history: vec![
                failed("the target answered 500"),
                crate::core::wire::NotificationAttempt {
                    time: at,
                    error: None,
                },
            ],
            ..sending.clone()
        };
        // The failure before the delivery is still told.
        assert_eq!(
            read(&delivered),
            ("delivered".into(), Some("the target answered 500".into()))
        );
        let given_up = Notification {
            done: true,
            next_attempt: None,
            ..retrying.clone()
        };
        assert_eq!(read(&given_up).0, "<span class=\"error\">given up</span>");
        let never_sent = Notification {
            done: true,
            next_attempt: None,
            error: Some("the filter cannot say: <no such key>".into()),
            ..sending
        };
        assert_eq!(
            read(&never_sent),
            (
                "<span class=\"error\">never sent</span>".into(),
                Some("the filter cannot say: <no such key>".into())
            )
        );
    }

    #[test]
    fn values_from_pushes_are_text() {
        let visitor = Visitor {
            logged_in: false,
            path: "/\"><script>".into(),
            same_origin: true,
        };
        let page = problem(&visitor, "<script>alert(1)</script>").into_string();
        assert!(page.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
        assert!(!page.contains("<script>alert"));
        assert!(!page.contains("\"><script>"));
    }
}
