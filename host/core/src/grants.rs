//! What a plugin may publish to: topic grants and Kafka's rule for topic
//! names.

/// Topic patterns a plugin may publish to: exact names, or patterns where
/// `*` matches any run of characters (`notification.*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grants {
    patterns: Vec<String>,
}

impl Grants {
    /// Grants for exactly these patterns.
    pub fn new(patterns: Vec<String>) -> Self {
        Self { patterns }
    }

    /// Every topic.
    pub fn all() -> Self {
        Self::new(vec!["*".to_string()])
    }

    /// The patterns.
    pub fn patterns(&self) -> &[String] {
        &self.patterns
    }

    /// Whether `topic` is granted.
    pub fn allows(&self, topic: &str) -> bool {
        self.patterns.iter().any(|p| glob_match(p, topic))
    }
}

/// `*`-only glob matching.
fn glob_match(pattern: &str, text: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == text;
    }
    let (first, rest) = (parts[0], &parts[1..]);
    let Some(mut remaining) = text.strip_prefix(first) else {
        return false;
    };
    let last = rest[rest.len() - 1];
    for middle in &rest[..rest.len() - 1] {
        match remaining.find(middle) {
            Some(i) => remaining = &remaining[i + middle.len()..],
            None => return false,
        }
    }
    remaining.len() >= last.len() && remaining.ends_with(last)
}

/// Kafka's rule for topic names.
pub fn valid_topic_name(topic: &str) -> bool {
    !topic.is_empty()
        && topic.len() <= 249
        && topic != "."
        && topic != ".."
        && topic
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        let g = Grants::new(vec!["notification.*".into(), "create-user-response".into()]);
        assert!(g.allows("notification.send.email"));
        assert!(g.allows("create-user-response"));
        assert!(!g.allows("create-user"));
        assert!(!g.allows("notification"));
        assert!(Grants::all().allows("anything"));
        assert!(glob_match("a*b*c", "axxbyyc"));
        assert!(!glob_match("a*b*c", "axxbyy"));
        assert!(glob_match("*-response", "create-user-response"));
        assert!(!Grants::new(vec![]).allows("x"));
    }

    #[test]
    fn topic_names() {
        assert!(valid_topic_name("user.registered.v1"));
        assert!(valid_topic_name("USER_CREATED"));
        assert!(!valid_topic_name(""));
        assert!(!valid_topic_name("has space"));
        assert!(!valid_topic_name(".."));
        assert!(!valid_topic_name(&"x".repeat(250)));
    }
}
