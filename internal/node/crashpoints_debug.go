//go:build droverdebug

package node

// crashPoints is true in a test build (-tags droverdebug): requests may
// carry crash_at and DROVER_CRASH_AT is honoured, so crash tests can kill
// the engine at a named step.
const crashPoints = true
