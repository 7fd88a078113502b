//! Tests of calls: deadlines, and how a plugin's answer is cut to its budget (logs, the
//! message limit, long error messages).

use super::*;
use abi_stable::std_types::{RErr, ROk, RResult, RVec};
use plugin_api::abi::{FfiError, FfiOutcome};

#[test]
fn a_deadline_in_milliseconds_is_rounded_up_never_down() {
    use std::time::Duration;
    let at = |ns: u64| UNIX_EPOCH + Duration::from_nanos(ns);
    assert_eq!(deadline_unix_ms(at(5_000_000)), 5);
    assert_eq!(deadline_unix_ms(at(5_000_001)), 6);
    assert_eq!(deadline_unix_ms(at(5_999_999)), 6);
    assert_eq!(deadline_unix_ms(UNIX_EPOCH), 1, "0 would mean no deadline");
}

fn outcome(budget: &Budget, ffi: &FfiOutcome) -> Owned {
    let result = match &ffi.result {
        ROk(json) => Ok(json.as_bytes()),
        RErr(err) => Err(err),
    };
    budget.outcome("p", result, &ffi.follow_ups, &ffi.logs)
}

fn record(message: String) -> FfiLogRecord {
    FfiLogRecord {
        level: Level::Info as u8,
        message: message.into(),
        unix_ms: 1,
    }
}

fn ffi(result: RResult<abi_stable::std_types::RString, FfiError>, logs: usize) -> FfiOutcome {
    FfiOutcome {
        result,
        follow_ups: RVec::new(),
        logs: (0..logs).map(|i| record(format!("line {i:04}"))).collect(),
    }
}

#[test]
fn logs_past_the_budget_are_cut_with_a_last_record_saying_so() {
    let budget = Budget {
        max_message: 1 << 20,
        max_log_bytes: 10 * (9 + RECORD_OVERHEAD),
    };
    let owned = outcome(&budget, &ffi(ROk("1".into()), 1000));
    assert_eq!(owned.logs.len(), 11);
    assert_eq!(owned.logs[9].message, "line 0009");
    let last = &owned.logs[10];
    assert_eq!(last.level, Level::Warn);
    assert!(
        last.message
            .starts_with("990 log records (8910 bytes) dropped"),
        "{}",
        last.message
    );
}

#[test]
fn the_whole_answer_counts_against_the_message_limit() {
    let budget = Budget {
        max_message: 100,
        max_log_bytes: 1 << 20,
    };
    // The result fits, so the logs get what is left of the 100 bytes: one record.
    let owned = outcome(&budget, &ffi(ROk("[1,2,3]".into()), 5));
    assert!(owned.result.is_some());
    assert_eq!(owned.logs.len(), 2, "{:?}", owned.logs);
    assert!(owned.logs[1].message.starts_with("4 log records"));

    let mut big = ffi(ROk("1".into()), 0);
    big.follow_ups.push(FfiFollowUp {
        plugin: "p".into(),
        callback: "c".into(),
        input_json: "0".repeat(200).into(),
    });
    let owned = outcome(&budget, &big);
    assert!(owned.result.is_none() && owned.follow_ups.is_empty());
    let err = owned.error.unwrap();
    assert!(
        err.message()
            .contains("1 bytes of result and 202 of follow-ups, over the limit of 100"),
        "{err}"
    );
}

#[test]
fn long_error_messages_are_cut_on_a_character_boundary() {
    let budget = Budget {
        max_message: 1 << 30,
        max_log_bytes: 0,
    };
    let message = "é".repeat(MAX_ERROR_MESSAGE);
    let owned = outcome(
        &budget,
        &ffi(
            RErr(FfiError {
                kind: ErrorKind::Failed.code(),
                message: message.into(),
            }),
            0,
        ),
    );
    let err = owned.error.unwrap();
    assert!(err.message().len() < MAX_ERROR_MESSAGE + 40);
    assert!(err.message().ends_with("bytes cut)"), "{}", err.message());
    assert_eq!(err.kind(), ErrorKind::Failed);
}
