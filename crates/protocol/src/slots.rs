//! The control plane's stream slots and hourly grants as they lie in
//! Redis: a contract between the control plane, which reserves them, and
//! the gateways, which report session ends into them. One definition, so
//! both sides name the same keys and run the same script.

/// Sorted set of a client's held stream slots (member: sid, score: exp).
pub fn streams_key(prefix: &str, tenant: &str, client: &str) -> String {
    format!("{prefix}streams:{tenant}:{client}")
}

/// Sorted set of a client's grants in the last hour (member:
/// `sid:bytes`, score: when granted).
pub fn grants_key(prefix: &str, tenant: &str, client: &str) -> String {
    format!("{prefix}grants:{tenant}:{client}")
}

/// Frees an ended session's slot and gives back the part of its hourly
/// grant it did not use. KEYS: streams, grants. ARGV: sid, bytes used.
pub const END_SESSION: &str = r#"
redis.call('ZREM', KEYS[1], ARGV[1])
local grants = redis.call('ZRANGE', KEYS[2], 0, -1, 'WITHSCORES')
local prefix = ARGV[1] .. ':'
for i = 1, #grants, 2 do
  local m = grants[i]
  if string.sub(m, 1, #prefix) == prefix then
    local granted = tonumber(string.sub(m, #prefix + 1))
    local used = tonumber(ARGV[2])
    if granted and used < granted then
      redis.call('ZREM', KEYS[2], m)
      redis.call('ZADD', KEYS[2], grants[i + 1], prefix .. used)
    end
  end
end
return 1
"#;
