//! Who a plugin is to the database and in logs: the PostgreSQL role named
//! after its key in the routing config, and the short hash that names a
//! version of its component.

use sha2::Digest;

/// The first 12 hex digits of a SHA-256: how versions are named in logs.
pub fn short_hash(bytes: &[u8]) -> String {
    hex(&sha2::Sha256::digest(bytes)[..6])
}

/// Bytes as lower-case hex digits.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The PostgreSQL role a plugin's SQL runs as: `switchyard_plugin_<name>`,
/// lowercase ASCII letters, digits and `_`; at most 63 bytes.
pub fn plugin_role(plugin: &str) -> String {
    let name: String = plugin
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect();
    let mut role = format!("switchyard_plugin_{name}");
    role.truncate(63);
    role
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_fold_to_postgres_identifiers() {
        assert_eq!(
            plugin_role("role-mapping"),
            "switchyard_plugin_role_mapping"
        );
        assert_eq!(plugin_role("Stats"), "switchyard_plugin_stats");
        assert_eq!(plugin_role(&"x".repeat(100)).len(), 63);
        assert_eq!(short_hash(b"").len(), 12);
    }
}
