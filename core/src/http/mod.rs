//! HTTP/1.1 on the gateway's port: request heads parsed with httparse, the route table, and the
//! responses (PROTOCOL section 1).

pub mod assets;
pub mod request;
pub mod response;
pub mod route;

pub use assets::{Asset, Assets};
pub use request::{parse_head, HeadError, HeadParse, RequestHead};
pub use response::Response;
pub use route::Route;
