//! A browser session on `/stream/{sid}`: [`browser`] upgrades,
//! authenticates and dispatches its actions; [`query`], [`fanout`] and
//! [`relay`] forward an edge's frames into its outbox under its [`quota`].

mod actions;
pub mod browser;
pub mod burst;
pub mod fanout;
pub mod query;
pub mod quota;
pub mod relay;
mod state;

pub use state::{check_dataset, other_tenant, BrowserReader, Flow, Session};
