//! PERSISTENT RESERVE state machine tests.

use super::*;
