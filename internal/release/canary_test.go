package release

import (
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestCanaryFile: a decision needs a paused canary of the same release; a
// new pause replaces an old decision; clear removes only its release's
// record.
func TestCanaryFile(t *testing.T) {
	f := &CanaryFile{Path: filepath.Join(t.TempDir(), ".drover", "canary.json")}
	now := time.Now()
	if _, err := f.Decide("R2", CanaryPromote, "ops@ci", now); err == nil || !strings.Contains(err.Error(), "no canary is paused") {
		t.Fatalf("decide with nothing paused: %v", err)
	}
	if err := f.Pause(Canary{Release: "R1", Hosts: []string{"h1"}, Since: now}); err != nil {
		t.Fatal(err)
	}
	if _, err := f.Decide("R1", CanaryAbort, "old@run", now); err != nil {
		t.Fatal(err)
	}
	if err := f.Pause(Canary{Release: "R2", Hosts: []string{"h1"}, Since: now}); err != nil {
		t.Fatal(err)
	}
	if c, err := f.Read(); err != nil || c.Release != "R2" || c.Decision != "" {
		t.Fatalf("after a new pause: %+v, %v", c, err)
	}
	if _, err := f.Decide("R1", CanaryPromote, "ops@ci", now); err == nil || !strings.Contains(err.Error(), "the paused canary is release R2, not R1") {
		t.Errorf("decide another release: %v", err)
	}
	c, err := f.Decide("R2", CanaryPromote, "ops@ci", now)
	if err != nil || c.Decision != CanaryPromote || c.By != "ops@ci" {
		t.Fatalf("promote: %+v, %v", c, err)
	}
	if c, _ := f.Decide("R2", CanaryAbort, "late@ci", now); c.Decision != CanaryPromote {
		t.Errorf("a second decision replaced the first: %+v", c)
	}
	if err := f.Clear("R1"); err != nil {
		t.Fatal(err)
	}
	if c, _ := f.Read(); c == nil {
		t.Error("clear of another release removed the record")
	}
	if err := f.Clear("R2"); err != nil {
		t.Fatal(err)
	}
	if c, _ := f.Read(); c != nil {
		t.Errorf("record after clear: %+v", c)
	}
}
