//! A message a plugin published, as the host will produce it, and its
//! size as the producer counts it.

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
        crate::event::first_header(&self.headers, name)
    }
}

/// Bytes of an unsigned LEB128 varint holding `n` zigzag-encoded, as
/// librdkafka counts a header's name and value lengths.
fn zigzag_varint_len(n: usize) -> usize {
    let mut z = (n as u64) << 1;
    let mut len = 1;
    while z >= 0x80 {
        z >>= 7;
        len += 1;
    }
    len
}

/// The most a record's framing adds (MessageV2: length, attributes,
/// timestamp and offset deltas, key and value lengths, header count), as
/// librdkafka reserves it: `RD_KAFKAP_MESSAGE_V2_MAX_OVERHEAD`.
pub const RECORD_OVERHEAD_BYTES: usize = 5 + 1 + 10 + 5 + 5 + 5 + 5;

/// The size librdkafka compares with `message.max.bytes` when a record is
/// produced (`rd_kafka_msg_max_wire_size`): key + value + each header's
/// name, value and their varint lengths + the framing overhead. The host's
/// publish cap counts the same, so a message the plugin was allowed to
/// publish is one the producer accepts.
pub fn record_wire_size(
    key: Option<&[u8]>,
    value: &[u8],
    headers: &[(String, Option<Vec<u8>>)],
) -> usize {
    let headers: usize = headers
        .iter()
        .map(|(name, v)| {
            let value = v.as_ref().map_or(0, Vec::len);
            name.len() + value + zigzag_varint_len(name.len()) + zigzag_varint_len(value)
        })
        .sum();
    RECORD_OVERHEAD_BYTES + key.map_or(0, <[u8]>::len) + value.len() + headers
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varint_lengths_match_zigzag_encoding() {
        assert_eq!(zigzag_varint_len(0), 1);
        assert_eq!(zigzag_varint_len(63), 1);
        assert_eq!(zigzag_varint_len(64), 2);
        assert_eq!(zigzag_varint_len(8191), 2);
        assert_eq!(zigzag_varint_len(8192), 3);
    }
}
