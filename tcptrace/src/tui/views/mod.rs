//! One file per view of `top`, each an `impl Screen` adding the method
//! that draws that view's body.

mod close_wait;
mod connections;
mod histograms;
mod listeners;
mod overview;
mod time_wait;
