//! When a canary rollout is decided: it fails as soon as one canary failed (the others
//! never load it), and goes everywhere once every canary passed its probation.

/// The new rollout (`everywhere` or `failed`) and its reason, or `None` while canaries are
/// still on their way. `reports` are `(host, state, reason)` of the canaries that reported.
pub(crate) fn decide(
    canaries: &[String],
    reports: &[(String, String, Option<String>)],
) -> Option<(&'static str, Option<String>)> {
    if let Some((host, _, reason)) = reports.iter().find(|(_, state, _)| state == "failed") {
        let why = reason.as_deref().unwrap_or("it failed there");
        return Some(("failed", Some(format!("canary {host}: {why}"))));
    }
    let passed = |host: &String| {
        reports
            .iter()
            .any(|(h, state, _)| h == host && state == "passed")
    };
    (!canaries.is_empty() && canaries.iter().all(passed)).then_some(("everywhere", None))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(host: &str, state: &str, reason: Option<&str>) -> (String, String, Option<String>) {
        (host.into(), state.into(), reason.map(Into::into))
    }

    #[test]
    fn one_failed_canary_fails_the_rollout_and_all_passed_open_it() {
        let canaries = vec!["a".to_owned(), "b".to_owned()];
        assert_eq!(decide(&canaries, &[]), None);
        assert_eq!(decide(&canaries, &[r("a", "passed", None)]), None);
        assert_eq!(
            decide(
                &canaries,
                &[r("a", "passed", None), r("b", "serving", None)]
            ),
            None
        );
        assert_eq!(
            decide(&canaries, &[r("a", "passed", None), r("b", "passed", None)]),
            Some(("everywhere", None))
        );
        assert_eq!(
            decide(
                &canaries,
                &[
                    r("a", "passed", None),
                    r("b", "failed", Some("self_test failed"))
                ]
            ),
            Some(("failed", Some("canary b: self_test failed".to_owned())))
        );
        assert_eq!(decide(&[], &[]), None);
    }
}
