package rollout_test

import (
	"testing"

	"github.com/drover/drover/internal/release"
	"github.com/drover/drover/internal/rollout"
)

// TestRollbackToUnknownReleaseByName: after a lost state file, releases on
// disk are `unknown`. Named with --to they can be rolled back to (the host
// runs them with their own drover.yml); never picked on their own.
func TestRollbackToUnknownReleaseByName(t *testing.T) {
	old := "20261101T000000Z-aaaaaaa"
	now := "20261102T000000Z-bbbbbbb"
	hosts := []*rollout.HostReleases{{Host: "h1", Active: now, Releases: []*release.Record{
		{ID: old, Status: release.StatusUnknown},
		{ID: now, Status: release.StatusActive},
	}}}
	got, err := rollout.RollbackTarget(hosts, old)
	if err != nil || got != old {
		t.Fatalf("RollbackTarget(--to %s) = %q, %v; want it", old, got, err)
	}
	if got, err := rollout.RollbackTarget(hosts, ""); err == nil && got == old {
		t.Errorf("an unknown release was picked as the rollback target without being named")
	}
}
