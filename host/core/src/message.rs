//! A message a plugin published, as the host will produce it.

/// A message a plugin published, as it will be produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutMessage {
    /// The plugin that published it (its name in the routing config): the
    /// outbox relay shares its window fairly between plugins and names the
    /// plugin when it moves a message aside.
    pub plugin: String,
    /// Destination topic.
    pub topic: String,
    /// Record key.
    pub key: Option<Vec<u8>>,
    /// Record value.
    pub payload: Vec<u8>,
    /// Headers: the plugin's, then `event-id` and `request-id` from the host.
    pub headers: Vec<(String, Option<Vec<u8>>)>,
    /// Explicit partition.
    pub partition: Option<i32>,
}

impl OutMessage {
    /// The first header called `name` as UTF-8 text.
    pub fn header_str(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .and_then(|(_, v)| v.as_deref())
            .and_then(|v| std::str::from_utf8(v).ok())
    }
}
