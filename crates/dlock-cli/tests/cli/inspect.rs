//! status, list, release --force and --report json, field by field; no password, ever.

use std::time::Duration;

use dlock_test::{RedisServer, ServerOptions};
use serde_json::Value;

use crate::support::{code, dlock, exists, finish, output, started, stderr, stdout, Scratch};

const LIMIT: Duration = Duration::from_secs(20);
const PASSWORD: &str = "pa55-w0rd";

fn protected() -> RedisServer {
    RedisServer::start_with(ServerOptions {
        password: Some(PASSWORD.into()),
        ..ServerOptions::default()
    })
}

fn no_password(outputs: &[&std::process::Output]) {
    for out in outputs {
        assert!(!stdout(out).contains(PASSWORD) && !stderr(out).contains(PASSWORD));
    }
}

fn json(line: &str) -> Value {
    serde_json::from_str(line.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {line:?}"))
}

#[test]
fn status_list_and_release_describe_a_held_lock() {
    let server = protected();
    let scratch = Scratch::new();
    let job = format!("touch {}; sleep 30", scratch.path("started").display());
    let holder = started(
        dlock(&server).args([
            "run",
            "--stop-timeout",
            "1s",
            "nightly:report",
            "--",
            "sh",
            "-c",
            &job,
        ]),
        &scratch.path("started"),
    );
    let pid = holder.id();

    let text = output(dlock(&server).args(["status", "nightly:report"]), LIMIT);
    assert_eq!(code(&text), 0, "{}", stderr(&text));
    let text_out = stdout(&text);
    assert!(
        text_out.starts_with("nightly:report: held by "),
        "{text_out}"
    );
    assert!(text_out.contains(&format!(" pid {pid} for ")), "{text_out}");
    assert!(text_out.contains("lease ends in"), "{text_out}");
    assert!(
        text_out.contains(&format!("command:       sh -c {job}")),
        "{text_out}"
    );
    assert!(text_out.contains("fencing token: "), "{text_out}");

    let as_json = output(
        dlock(&server).args(["status", "--json", "nightly:report"]),
        LIMIT,
    );
    let status = json(&stdout(&as_json));
    assert_eq!(status["key"], "nightly:report");
    assert_eq!(status["held"], true);
    let ttl_left = status["ttl_left_ms"].as_u64().unwrap();
    assert!(ttl_left > 20_000 && ttl_left <= 30_000, "{ttl_left}");
    assert_eq!(status["holder"]["pid"], pid);
    assert_eq!(status["holder"]["label"], format!("sh -c {job}"));
    let token = status["holder"]["fencing_token"].as_u64().unwrap();
    assert_eq!(status["last_fencing_token"].as_u64(), Some(token));
    assert!(status["holder"]["held_for_ms"].as_u64().unwrap() < 20_000);
    assert!(!status["holder"]["host"].as_str().unwrap().is_empty());

    let list = output(dlock(&server).args(["list"]), LIMIT);
    let table = stdout(&list);
    assert!(table.starts_with("KEY"), "{table}");
    assert!(
        table.lines().nth(1).unwrap().starts_with("nightly:report"),
        "{table}"
    );
    let list_json = output(dlock(&server).args(["list", "--json", "nightly:*"]), LIMIT);
    let lines: Vec<Value> = stdout(&list_json).lines().map(json).collect();
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["holder"]["pid"], pid);
    let none = output(dlock(&server).args(["list", "--json", "other:*"]), LIMIT);
    assert_eq!(stdout(&none), "");

    let release = output(
        dlock(&server).args(["release", "--force", "nightly:report"]),
        LIMIT,
    );
    assert_eq!(code(&release), 0, "{}", stderr(&release));
    let said = stdout(&release);
    assert!(
        said.starts_with("released nightly:report; it was held by "),
        "{said}"
    );
    assert!(
        said.contains(&format!("pid {pid}")) && said.contains(&token.to_string()),
        "{said}"
    );
    assert!(!exists(&server, "nightly:report"));

    // The holder learns of the loss at its next renewal and stops its command.
    let holder = finish(holder, LIMIT);
    assert_eq!(code(&holder), 76, "{}", stderr(&holder));

    let again = output(
        dlock(&server).args(["release", "--force", "--json", "nightly:report"]),
        LIMIT,
    );
    assert_eq!(json(&stdout(&again))["held"], false);
    let free = output(dlock(&server).args(["status", "nightly:report"]), LIMIT);
    assert!(
        stdout(&free).starts_with("nightly:report: free"),
        "{}",
        stdout(&free)
    );
    assert!(stdout(&free).contains(&format!("last fencing token: {token}")));
    no_password(&[
        &text, &as_json, &list, &list_json, &release, &again, &free, &holder,
    ]);
}

#[test]
fn report_json_describes_the_run_field_by_field() {
    let server = protected();
    let scratch = Scratch::new();
    let ran = output(
        dlock(&server).args(["run", "--report", "json", "rep", "--", "sh", "-c", "exit 3"]),
        LIMIT,
    );
    assert_eq!(code(&ran), 3);
    let report = json(stderr(&ran).lines().last().unwrap());
    assert_eq!(report["key"], "rep");
    assert_eq!(report["outcome"], "ran");
    assert_eq!(report["acquired"], true);
    assert_eq!(report["ran"], true);
    assert_eq!(report["exit_code"], 3);
    assert_eq!(report["signal"], Value::Null);
    assert_eq!(report["lost"], false);
    assert!(report["fencing_token"].as_u64().unwrap() > 0);
    assert_eq!(report["dlock_exit_code"], 3);
    for field in [
        "waited_ms",
        "run_ms",
        "held_ms",
        "total_ms",
        "started_at_ms",
        "asked_at_ms",
        "command_ended_at_ms",
    ] {
        assert!(report[field].is_u64(), "{field}: {report}");
    }
    // Wall-clock times in order: asked, then the command's end; it ended by itself.
    let at = |field: &str| report[field].as_u64().unwrap();
    assert!(at("started_at_ms") <= at("asked_at_ms"), "{report}");
    assert!(
        at("asked_at_ms") + at("waited_ms") <= at("command_ended_at_ms"),
        "{report}"
    );
    assert_eq!(report["stop_sent_at_ms"], Value::Null);

    let file = scratch.path("report.jsonl");
    let job = format!("touch {}; sleep 2", scratch.path("started").display());
    let holder = started(
        dlock(&server).args(["run", "rep", "--", "sh", "-c", &job]),
        &scratch.path("started"),
    );
    let busy = output(
        dlock(&server)
            .args(["run", "--report", "json", "--report-file"])
            .arg(&file)
            .args(["rep", "--", "true"]),
        LIMIT,
    );
    assert_eq!(code(&busy), 75);
    let report = json(&std::fs::read_to_string(&file).unwrap());
    assert_eq!(report["outcome"], "busy");
    assert_eq!(report["acquired"], false);
    assert_eq!(report["ran"], false);
    assert_eq!(report["exit_code"], Value::Null);
    assert_eq!(report["holder"]["pid"], holder.id());
    assert!(report["asked_at_ms"].is_u64(), "{report}");
    assert_eq!(report["command_ended_at_ms"], Value::Null);
    assert_eq!(report["dlock_exit_code"], 75);
    finish(holder, LIMIT);
    no_password(&[&ran, &busy]);
    assert!(!std::fs::read_to_string(&file).unwrap().contains(PASSWORD));
}
