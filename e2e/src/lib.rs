//! Berth's lab and end-to-end suites: namespaces, real routers, real traffic.
//!
//! Empty in this build; the lab binary only explains that.
