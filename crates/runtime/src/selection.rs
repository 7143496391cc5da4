//! `--controllers` parsing with upstream semantics: `*` turns on every controller that is
//! on by default, `name` turns one on, `-name` turns one off; the last mention wins.

/// Which controllers run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ControllerSelection {
    entries: Vec<String>,
}

impl Default for ControllerSelection {
    fn default() -> Self {
        ControllerSelection {
            entries: vec!["*".to_string()],
        }
    }
}

impl ControllerSelection {
    /// Parses a comma-separated list such as `*,-job`.
    pub fn parse(spec: &str) -> ControllerSelection {
        ControllerSelection {
            entries: spec
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect(),
        }
    }

    /// Whether `name` runs, given whether it is on by default.
    pub fn is_enabled(&self, name: &str, on_by_default: bool) -> bool {
        let mut enabled = false;
        for entry in &self.entries {
            if entry == "*" {
                enabled = enabled || on_by_default;
            } else if entry.strip_prefix('-') == Some(name) {
                return false;
            } else if entry == name {
                enabled = true;
            }
        }
        enabled
    }

    /// Names mentioned that are not in `known` (typos), for a startup error.
    pub fn unknown<'a>(&'a self, known: &[&str]) -> Vec<&'a str> {
        self.entries
            .iter()
            .map(|e| e.trim_start_matches('-'))
            .filter(|e| *e != "*" && !known.contains(e))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn star_minus_and_explicit_names() {
        let sel = ControllerSelection::parse("*,-job");
        assert!(sel.is_enabled("replicaset", true));
        assert!(!sel.is_enabled("job", true));
        assert!(!sel.is_enabled("bootstrapsigner", false));
        let only = ControllerSelection::parse("deployment, replicaset");
        assert!(only.is_enabled("deployment", true));
        assert!(!only.is_enabled("job", true));
        let off_first = ControllerSelection::parse("-job,*");
        assert!(!off_first.is_enabled("job", true));
        assert_eq!(
            ControllerSelection::parse("*,-jbo,foo").unknown(&["job"]),
            vec!["jbo", "foo"]
        );
    }
}
