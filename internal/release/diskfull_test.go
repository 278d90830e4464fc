package release_test

import (
	"context"
	"crypto/rand"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/drover/drover/internal/release"
	"github.com/drover/drover/internal/testenv/apptest"
)

// TestDiskFullDuringPrepare deploys into a small tmpfs, then prepares a
// release too big for it: prepare fails naming the step and the cause,
// current still points at the complete first release, shared/ is intact,
// and cleanup clears what the failed release left.
func TestDiskFullDuringPrepare(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("mounting a tmpfs needs root")
	}
	mnt := t.TempDir()
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=20m", "tmpfs", mnt).CombinedOutput(); err != nil {
		t.Skipf("cannot mount tmpfs: %v %s", err, out)
	}
	t.Cleanup(func() { _ = exec.Command("umount", "-l", mnt).Run() })

	a := apptest.New(t, apptest.Options{NoService: true, DeployTo: filepath.Join(mnt, "srv")})
	e := engine(a)
	ctx := context.Background()
	c1 := a.Repo.Head()
	r1 := id(1, c1)
	prepare(t, e, r1, c1)
	if err := e.Activate(ctx, r1); err != nil {
		t.Fatal(err)
	}
	upload := filepath.Join(a.DeployTo, "shared", "public", "uploads", "photo.jpg")
	if err := os.WriteFile(upload, []byte("precious"), 0o644); err != nil {
		t.Fatal(err)
	}

	// 24 MB of random bytes cannot be compressed into the mirror or unpacked.
	big := make([]byte, 24<<20)
	rand.Read(big)
	c2 := a.Repo.Commit("big asset", map[string]string{"assets/big.bin": string(big)})
	r2 := id(2, c2)
	_, err := e.Prepare(ctx, release.PrepareOptions{ID: r2, Commit: c2})
	var se *release.StepError
	if !errors.As(err, &se) {
		t.Fatalf("prepare on a full disk: %v", err)
	}
	if se.Step != "fetch" && se.Step != "checkout" {
		t.Errorf("failed in step %s", se.Step)
	}
	if !strings.Contains(strings.ToLower(err.Error()), "no space") {
		t.Errorf("error does not say the disk is full: %v", err)
	}
	if cur, _ := os.Readlink(filepath.Join(a.DeployTo, "current")); filepath.Base(cur) != r1 {
		t.Fatalf("current = %s, want %s", cur, r1)
	}
	if b, err := os.ReadFile(upload); err != nil || string(b) != "precious" {
		t.Fatalf("shared upload after disk full: %q %v", b, err)
	}
	if _, err := os.Stat(filepath.Join(a.DeployTo, "releases", r2)); !os.IsNotExist(err) {
		t.Errorf("a half-written release directory is left as %s: %v", r2, err)
	}
	// Cleanup removes the failed release's leftovers and keeps the active one.
	if _, err := e.Cleanup(ctx, 5); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(a.DeployTo, "releases", r1, "README")); err != nil {
		t.Fatalf("cleanup after disk full touched the active release: %v", err)
	}
}
