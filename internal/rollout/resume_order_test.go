package rollout_test

import (
	"testing"

	"github.com/drover/drover/internal/release"
	"github.com/drover/drover/internal/rollout"
)

// TestResumableByHostOrder: the last deploy came from a deployer whose
// clock was behind, so its ID sorts before the release every host runs.
// Resume picks it all the same, because each host recorded it last.
func TestResumableByHostOrder(t *testing.T) {
	const (
		running = "20261122T110000Z-aaaaaaa" // deployed first, clock ahead
		pending = "20261122T100000Z-bbbbbbb" // deployed later, clock behind; prepared on h1 only
	)
	hosts := []*rollout.HostReleases{
		{Host: "h1", Active: running, Releases: []*release.Record{
			{ID: pending, Commit: "bbbbbbb", Seq: 2, Status: release.StatusPrepared},
			{ID: running, Commit: "aaaaaaa", Seq: 1, Status: release.StatusActive},
		}},
		{Host: "h2", Active: running, Releases: []*release.Record{
			{ID: running, Commit: "aaaaaaa", Seq: 1, Status: release.StatusActive},
		}},
	}
	id, commit, _, err := rollout.Resumable(hosts)
	if err != nil || id != pending || commit != "bbbbbbb" {
		t.Fatalf("resumable = %s %s %v; want %s, the release the hosts recorded last", id, commit, err, pending)
	}
}
