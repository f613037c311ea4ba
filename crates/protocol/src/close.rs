//! WebSocket close codes. 1xxx are RFC 6455's own; 4xxx are Sluice's,
//! chosen to read like the HTTP status they resemble (4401 ≈ 401).

pub const NORMAL: u16 = 1000;
pub const GOING_AWAY: u16 = 1001;
pub const PROTOCOL: u16 = 1002;
pub const INVALID_UTF8: u16 = 1007;
pub const TOO_BIG: u16 = 1009;
pub const INTERNAL: u16 = 1011;
pub const BAD_REQUEST: u16 = 4400;
pub const BAD_TOKEN: u16 = 4401;
pub const FORBIDDEN: u16 = 4403;
pub const NOT_FOUND: u16 = 4404;
pub const AUTH_TIMEOUT: u16 = 4408;
pub const SLOW_CONSUMER: u16 = 4409;
pub const REVOKED: u16 = 4410;
pub const TOO_LARGE: u16 = 4413;
pub const QUOTA: u16 = 4429;
pub const EDGE_OFFLINE: u16 = 4503;
