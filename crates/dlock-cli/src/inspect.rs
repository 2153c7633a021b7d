//! `dlock status`, `dlock list` and `dlock release --force`: the operator's view of locks and
//! of semaphores (`dlock run --limit N`).
//!
//! A semaphore's holders live in a sorted set under the bare KEY, a lock's token in a string:
//! [`semaphore_in_use`] tells them apart by asking for the semaphore first (a stored limit
//! means a semaphore in use; Redis's `WRONGTYPE` means the key is a lock's).

use std::time::Duration;

use dlock::{Client, HolderInfo, LockStatus, SemaphoreHolder, SemaphoreStatus};

use crate::cli::{ListArgs, ReleaseArgs, StatusArgs};
use crate::lease::is_wrong_type;
use crate::report::{ms, to_line, PermitHolderJson, SemaphoreJson, StatusJson};
use crate::{connect, exit, fail};

/// `dlock status KEY`: exit 0 whether the lock (or semaphore) is held or free.
pub async fn status(args: StatusArgs) -> u8 {
    let client = match connect(&args.connection).await {
        Ok(client) => client,
        Err(e) => return fail(&e),
    };
    match semaphore_in_use(&client, &args.key).await {
        Ok(Some(semaphore)) if args.json => {
            outln!("{}", to_line(&SemaphoreJson::from(&semaphore)));
            return 0;
        }
        Ok(Some(semaphore)) => {
            out!("{}", describe_semaphore(&semaphore));
            return 0;
        }
        Ok(None) => {}
        Err(e) => return fail(&e),
    }
    match client.status(&args.key).await {
        Ok(status) if args.json => outln!("{}", to_line(&StatusJson::from(&status))),
        Ok(status) => out!("{}", describe(&status)),
        Err(e) => return fail(&e),
    }
    0
}

/// The state of `key` if it is a semaphore in use (with holders or waiters); `None` for a
/// lock, held or not, and for a semaphore nobody uses (which looks like a free lock).
async fn semaphore_in_use(client: &Client, key: &str) -> dlock::Result<Option<SemaphoreStatus>> {
    match client.semaphore_status(key).await {
        Ok(status) if status.limit.is_some() || !status.holders.is_empty() => Ok(Some(status)),
        Ok(_) => Ok(None),
        // The key holds a lock's token.
        Err(e) if is_wrong_type(&e) => Ok(None),
        Err(e) => Err(e),
    }
}

/// `dlock list [PATTERN]`: a table (or JSON lines) of held locks and semaphores in use,
/// sorted by name.
pub async fn list(args: ListArgs) -> u8 {
    let client = match connect(&args.connection).await {
        Ok(client) => client,
        Err(e) => return fail(&e),
    };
    let locks = match client.list(&args.pattern).await {
        Ok(locks) => locks,
        Err(e) => return fail(&e),
    };
    let semaphores = match client.list_semaphores(&args.pattern).await {
        Ok(semaphores) => semaphores,
        Err(e) => return fail(&e),
    };
    let mut entries: Vec<Entry> = locks
        .iter()
        .map(Entry::Lock)
        .chain(semaphores.iter().map(Entry::Semaphore))
        .collect();
    entries.sort_by(|a, b| a.key().cmp(b.key()));
    if args.json {
        for entry in &entries {
            outln!(
                "{}",
                match entry {
                    Entry::Lock(lock) => to_line(&StatusJson::from(*lock)),
                    Entry::Semaphore(semaphore) => to_line(&SemaphoreJson::from(*semaphore)),
                }
            );
        }
        return 0;
    }
    if entries.is_empty() {
        outln!(
            "no locks held and no semaphores in use (pattern {:?})",
            args.pattern
        );
        return 0;
    }
    let mut rows = Vec::new();
    for entry in &entries {
        match entry {
            Entry::Lock(lock) => rows.push(lock_row(lock)),
            Entry::Semaphore(semaphore) => rows.extend(semaphore_rows(semaphore)),
        }
    }
    out!(
        "{}",
        table(
            "",
            &["KEY", "TYPE", "HOLDER", "HELD FOR", "TTL LEFT", "LABEL"],
            &rows
        )
    );
    0
}

/// One line of `list`.
enum Entry<'a> {
    Lock(&'a LockStatus),
    Semaphore(&'a SemaphoreStatus),
}

impl Entry<'_> {
    fn key(&self) -> &str {
        match self {
            Entry::Lock(lock) => &lock.key,
            Entry::Semaphore(semaphore) => &semaphore.key,
        }
    }
}

/// A held lock's row of `list`.
fn lock_row(lock: &LockStatus) -> Vec<String> {
    let holder = lock.holder.as_ref();
    vec![
        lock.key.clone(),
        match holder.map_or(0, |h| h.readers) {
            0 => "lock".into(),
            n => format!("shared {n}"),
        },
        holder.map_or("?".into(), |h| {
            let who = who(h);
            if h.finished {
                format!("{who} (finished; --min-hold)")
            } else if h.readers > 1 {
                format!("{who} +{}", h.readers - 1)
            } else {
                who
            }
        }),
        holder.map_or("?".into(), |h| short(h.held_for)),
        lock.ttl_left.map_or("-".into(), short),
        holder.map_or("?".into(), |h| h.label.clone().unwrap_or_default()),
    ]
}

/// A semaphore's rows of `list`: one per holder, typed "semaphore TAKEN/LIMIT".
fn semaphore_rows(semaphore: &SemaphoreStatus) -> Vec<Vec<String>> {
    let kind = format!(
        "semaphore {}/{}",
        taken(semaphore),
        semaphore.limit.map_or("?".into(), |n| n.to_string())
    );
    if semaphore.holders.is_empty() {
        // In use by waiters only.
        return vec![vec![
            semaphore.key.clone(),
            kind,
            "-".into(),
            "-".into(),
            "-".into(),
            String::new(),
        ]];
    }
    semaphore
        .holders
        .iter()
        .map(|holder| {
            let info = &holder.info;
            let mut who = who(info);
            if info.permits > 1 {
                who.push_str(&format!(" ({} permits)", info.permits));
            }
            vec![
                semaphore.key.clone(),
                kind.clone(),
                who,
                short(info.held_for),
                short(holder.ttl_left),
                info.label.clone().unwrap_or_default(),
            ]
        })
        .collect()
}

/// `dlock release KEY --force [--holder FENCING_TOKEN]`.
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
    match semaphore_in_use(&client, &args.key).await {
        Ok(Some(_)) => return release_permits(&client, &args).await,
        Ok(None) => {}
        Err(e) => return fail(&e),
    }
    if let Some(token) = args.holder {
        // Not a semaphore in use: a lock (which --holder cannot name), or nothing at all.
        return match client.status(&args.key).await {
            Ok(status) if status.held => {
                errln!(
                    "dlock: {} is a lock, not a semaphore: --holder {token} names one holder of \
                     a semaphore; break the lock with --force alone",
                    args.key
                );
                exit::USAGE
            }
            Ok(status) => {
                if args.json {
                    outln!("{}", to_line(&StatusJson::from(&status)));
                } else {
                    outln!("{} was not held; nothing released", status.key);
                }
                0
            }
            Err(e) => fail(&e),
        };
    }
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

/// Frees every permit of a semaphore, or those of the holder `--holder` names, and says whose.
async fn release_permits(client: &Client, args: &ReleaseArgs) -> u8 {
    let before = match client.force_release_permits(&args.key, args.holder).await {
        Ok(before) => before,
        Err(e) => return fail(&e),
    };
    let released: Vec<&SemaphoreHolder> = if before.freed == 0 {
        Vec::new()
    } else {
        before
            .holders
            .iter()
            .filter(|h| {
                args.holder
                    .is_none_or(|token| h.info.fencing_token == token)
            })
            .collect()
    };
    if args.json {
        let mut json = SemaphoreJson::from(&before);
        json.released = Some(
            released
                .iter()
                .map(|h| PermitHolderJson::from(*h))
                .collect(),
        );
        outln!("{}", to_line(&json));
        return 0;
    }
    let key = &before.key;
    match (args.holder, released.as_slice()) {
        (Some(token), []) => {
            outln!("{key} has no holder with fencing token {token}; nothing released");
        }
        (None, []) => outln!("{key} had no holder; nothing released"),
        (Some(_), [holder]) => outln!(
            "released the permit of {key} held by {}",
            describe_permit_holder(holder)
        ),
        (_, holders) => {
            outln!(
                "released every permit of {key} (semaphore with {} permits); they were held by:",
                before.limit.map_or("?".into(), |n| n.to_string())
            );
            for holder in holders {
                outln!("  {}", describe_permit_holder(holder));
            }
        }
    }
    0
}

/// "web-1 pid 42 for 3.2s, 1 permit, fencing token 17, command: sh -c …".
fn describe_permit_holder(holder: &SemaphoreHolder) -> String {
    let info = &holder.info;
    let mut text = format!(
        "{} for {}, {} permit{}, fencing token {}",
        who(info),
        short(info.held_for),
        info.permits,
        if info.permits == 1 { "" } else { "s" },
        info.fencing_token
    );
    if let Some(label) = &info.label {
        text.push_str(&format!(", command: {label}"));
    }
    text
}

/// A semaphore's state: limit, permits taken and free, and a table of its holders.
fn describe_semaphore(status: &SemaphoreStatus) -> String {
    let limit = status.limit.map_or("?".into(), |n| n.to_string());
    let mut text = format!(
        "{}: semaphore with {limit} permits, {} taken, {} free\n",
        status.key,
        taken(status),
        status.free
    );
    if status.holders.is_empty() {
        text.push_str("  no holder (only waiters)\n");
    } else {
        let rows: Vec<Vec<String>> = status
            .holders
            .iter()
            .map(|holder| {
                let info = &holder.info;
                vec![
                    who(info),
                    info.permits.to_string(),
                    short(info.held_for),
                    short(holder.ttl_left),
                    info.fencing_token.to_string(),
                    info.label.clone().unwrap_or_default(),
                ]
            })
            .collect();
        text.push_str(&table(
            "  ",
            &[
                "HOLDER",
                "PERMITS",
                "HELD FOR",
                "TTL LEFT",
                "FENCING TOKEN",
                "COMMAND",
            ],
            &rows,
        ));
    }
    if let Some(token) = status.last_fencing_token {
        text.push_str(&format!("  last fencing token: {token}\n"));
    }
    text
}

/// Permits its holders have.
fn taken(status: &SemaphoreStatus) -> u32 {
    status.holders.iter().map(|h| h.info.permits).sum()
}

/// "web-1 pid 42", or the host alone.
fn who(holder: &HolderInfo) -> String {
    match holder.pid {
        Some(pid) => format!("{} pid {pid}", holder.host),
        None => holder.host.clone(),
    }
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
    if holder.readers > 0 {
        text.push_str(&format!(
            "  shared by:     {} (dlock run --shared); the earliest is described below\n",
            match holder.readers {
                1 => "1 reader".to_owned(),
                n => format!("{n} readers"),
            }
        ));
    }
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

/// Rows under a header, in columns, each line after `indent`.
fn table(indent: &str, header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|cell| cell.len()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(cell, &width)| format!("{cell:<width$}"))
            .collect();
        format!("{indent}{}\n", padded.join("  ").trim_end())
    };
    let mut text = line(header.to_vec());
    for row in rows {
        text.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    text
}
