//! # genie-loadtest
//!
//! Will own Genie's OpenAI load generator (closed/open loop, TTFT/ITL/goodput, HDR
//! histograms, trace replay) and the k6 scripts. Nothing is implemented yet.
