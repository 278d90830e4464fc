//go:build !droverdebug

package node

// crashPoints is false in every normal build: a request carrying crash_at
// is refused and Server.CrashAt is ignored, so nothing that can reach a
// host's `drover node serve` can make its engine kill itself.
const crashPoints = false
