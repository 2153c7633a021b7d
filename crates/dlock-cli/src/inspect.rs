//! `dlock status`, `dlock list` and `dlock release --force`: the operator's view of locks.

use std::time::Duration;

use dlock::{HolderInfo, LockStatus};

use crate::cli::{ListArgs, ReleaseArgs, StatusArgs};
use crate::report::{ms, to_line, StatusJson};
use crate::{connect, exit, fail};

/// `dlock status KEY`: exit 0 whether the lock is held or free.
pub async fn status(args: StatusArgs) -> u8 {
    let client = match connect(&args.connection).await {
        Ok(client) => client,
        Err(e) => return fail(&e),
    };
    match client.status(&args.key).await {
        Ok(status) if args.json => outln!("{}", to_line(&StatusJson::from(&status))),
        Ok(status) => out!("{}", describe(&status)),
        Err(e) => return fail(&e),
    }
    0
}

/// `dlock list [PATTERN]`: a table (or JSON lines) of held locks.
pub async fn list(args: ListArgs) -> u8 {
    let client = match connect(&args.connection).await {
        Ok(client) => client,
        Err(e) => return fail(&e),
    };
    let locks = match client.list(&args.pattern).await {
        Ok(locks) => locks,
        Err(e) => return fail(&e),
    };
    if args.json {
        for lock in &locks {
            outln!("{}", to_line(&StatusJson::from(lock)));
        }
        return 0;
    }
    if locks.is_empty() {
        outln!("no locks held (pattern {:?})", args.pattern);
        return 0;
    }
    let rows: Vec<[String; 5]> = locks
        .iter()
        .map(|lock| {
            let holder = lock.holder.as_ref();
            [
                lock.key.clone(),
                holder.map_or("?".into(), |h| {
                    let who = match h.pid {
                        Some(pid) => format!("{} pid {pid}", h.host),
                        None => h.host.clone(),
                    };
                    if h.finished {
                        format!("{who} (finished; --min-hold)")
                    } else {
                        who
                    }
                }),
                holder.map_or("?".into(), |h| short(h.held_for)),
                lock.ttl_left.map_or("-".into(), short),
                holder.map_or("?".into(), |h| h.label.clone().unwrap_or_default()),
            ]
        })
        .collect();
    print_table(&["KEY", "HOLDER", "HELD FOR", "TTL LEFT", "LABEL"], &rows);
    0
}

/// `dlock release KEY --force`.
pub async fn release(args: ReleaseArgs) -> u8 {
    if !args.force {
        errln!(
            "dlock: refusing to release {} without --force: breaking a lock lets a second copy \
             of the job start while the first may still be running",
            args.key
        );
        return exit::USAGE;
    }
    let client = match connect(&args.connection).await {
        Ok(client) => client,
        Err(e) => return fail(&e),
    };
    let broken = match client.force_release(&args.key).await {
        Ok(broken) => broken,
        Err(e) => return fail(&e),
    };
    if args.json {
        outln!("{}", to_line(&StatusJson::from(&broken)));
    } else if broken.held {
        out!(
            "released {}; it was {}",
            broken.key,
            describe(&broken).trim_start_matches(&format!("{}: ", broken.key))
        );
    } else {
        outln!("{} was not held; nothing released", broken.key);
    }
    0
}

/// A multi-line description of a lock's state.
fn describe(status: &LockStatus) -> String {
    let mut text = String::new();
    let key = &status.key;
    match (&status.holder, status.held) {
        (_, false) => text.push_str(&format!("{key}: free\n")),
        (Some(holder), true) if holder.finished => {
            text.push_str(&format!("{key}: held for --min-hold (the job finished)"));
            if let Some(ttl) = status.ttl_left {
                text.push_str(&format!(", {} left", short(ttl)));
            }
            text.push('\n');
            text.push_str(&format!("  ran as:        {}", holder.host));
            if let Some(pid) = holder.pid {
                text.push_str(&format!(" pid {pid}"));
            }
            text.push('\n');
            describe_holder(&mut text, holder);
        }
        (Some(holder), true) => {
            text.push_str(&format!("{key}: held by {holder}"));
            if let Some(ttl) = status.ttl_left {
                text.push_str(&format!(", lease ends in {}", short(ttl)));
            }
            text.push('\n');
            describe_holder(&mut text, holder);
        }
        (None, true) => {
            text.push_str(&format!("{key}: held by an owner that left no holder info"));
            match status.ttl_left {
                Some(ttl) => text.push_str(&format!(", lease ends in {}\n", short(ttl))),
                None => text.push_str(", without expiry\n"),
            }
        }
    }
    if !status.held {
        if let Some(token) = status.last_fencing_token {
            text.push_str(&format!("  last fencing token: {token}\n"));
        }
    }
    text
}

/// The holder's details, one per line.
fn describe_holder(text: &mut String, holder: &HolderInfo) {
    if let Some(label) = &holder.label {
        text.push_str(&format!("  command:       {label}\n"));
    }
    text.push_str(&format!(
        "  acquired at:   {}\n",
        humantime::format_rfc3339_seconds(holder.acquired_at)
    ));
    text.push_str(&format!("  fencing token: {}\n", holder.fencing_token));
}

/// A duration to the millisecond for durations under a minute, to the second above.
fn short(duration: Duration) -> String {
    let rounded = if duration < Duration::from_secs(60) {
        Duration::from_millis(ms(duration))
    } else {
        Duration::from_secs(duration.as_secs())
    };
    humantime::format_duration(rounded).to_string()
}

fn print_table(header: &[&str; 5], rows: &[[String; 5]]) {
    let mut widths = header.map(str::len);
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        outln!("{}", padded.join("  ").trim_end());
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
}
