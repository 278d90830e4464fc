package release_test

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/drover/drover/internal/release"
	"github.com/drover/drover/internal/testenv/apptest"
)

// writeFiles creates each file (and its parents) with its content.
func writeFiles(t *testing.T, files map[string]string) {
	t.Helper()
	for p, content := range files {
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// wantFiles fails unless each file still holds its content.
func wantFiles(t *testing.T, files map[string]string) {
	t.Helper()
	for p, content := range files {
		if b, err := os.ReadFile(p); err != nil || string(b) != content {
			t.Errorf("%s = %q, %v; want %q", p, b, err, content)
		}
	}
}

// TestSharedOverlappingEntries lists a shared dir inside another one and a
// shared file inside a shared dir: the inner entries are shared through
// the outer link, and nothing the host holds is removed, on the first
// deploy or any later one.
func TestSharedOverlappingEntries(t *testing.T) {
	a := apptest.New(t, apptest.Options{NoService: true,
		Shared: "shared:\n  dirs: [public, public/uploads, storage]\n  files: [.env, storage/oauth-private.key]\n"})
	shared := filepath.Join(a.DeployTo, "shared")
	data := map[string]string{
		filepath.Join(shared, "public", "uploads", "cat.jpg"):   "meow",
		filepath.Join(shared, "public", "robots.txt"):           "User-agent: *\n",
		filepath.Join(shared, "storage", "oauth-private.key"):   "KEY",
		filepath.Join(shared, "storage", "logs", "laravel.log"): "log line\n",
	}
	writeFiles(t, data)
	e := engine(a)
	for i := 1; i <= 2; i++ {
		c := a.Repo.Commit("release", map[string]string{"n": string(rune('0' + i)), "public/index.html": "hi", "storage/.gitkeep": ""})
		rid := id(i, c)
		prepare(t, e, rid, c)
		if err := e.Activate(context.Background(), rid); err != nil {
			t.Fatal(err)
		}
		wantFiles(t, data)
		cur := filepath.Join(a.DeployTo, "current")
		wantFiles(t, map[string]string{
			filepath.Join(cur, "public", "uploads", "cat.jpg"): "meow",
			filepath.Join(cur, "storage", "oauth-private.key"): "KEY",
		})
	}
	// A fresh host gets every entry created under shared/.
	b := apptest.New(t, apptest.Options{NoService: true,
		Shared: "shared:\n  dirs: [public, public/uploads]\n  files: [storage/oauth-private.key]\n  \n"})
	e2 := engine(b)
	c := b.Repo.Head()
	prepare(t, e2, id(1, c), c)
	for _, p := range []string{"public/uploads", "storage/oauth-private.key"} {
		if _, err := os.Stat(filepath.Join(b.DeployTo, "shared", p)); err != nil {
			t.Errorf("shared/%s was not created: %v", p, err)
		}
	}
}

// TestSharedUnderRepoSymlink commits a symlink that leads out of the release
// and lists a shared entry under it: prepare fails naming the link, and
// what the symlink points at is left untouched.
func TestSharedUnderRepoSymlink(t *testing.T) {
	outside := filepath.Join(t.TempDir(), "elsewhere")
	precious := map[string]string{filepath.Join(outside, "uploads", "precious.jpg"): "keep me"}
	writeFiles(t, precious)
	a := apptest.New(t, apptest.Options{NoService: true, Shared: "shared:\n  dirs: [public/uploads]\n"})
	// The repository's public is a symlink to a directory outside deploy_to.
	if err := os.Symlink(outside, filepath.Join(a.Repo.Dir, "public")); err != nil {
		t.Fatal(err)
	}
	a.Repo.Git("add", "public")
	c := a.Repo.Commit("public is a link", nil)
	e := engine(a)
	_, err := e.Prepare(context.Background(), release.PrepareOptions{ID: id(1, c), Commit: c})
	if err == nil {
		t.Error("prepare linked a shared entry through a symlink that leaves the release")
	}
	t.Logf("prepare: %v", err)
	wantFiles(t, precious)
}

// TestSharedEntryIsSymlink has shared/public/uploads as a symlink to a
// mount elsewhere, a normal layout: it is used as it is, never replaced.
func TestSharedEntryIsSymlink(t *testing.T) {
	nfs := filepath.Join(t.TempDir(), "nfs", "uploads")
	data := map[string]string{filepath.Join(nfs, "cat.jpg"): "meow"}
	writeFiles(t, data)
	a := apptest.New(t, apptest.Options{NoService: true})
	link := filepath.Join(a.DeployTo, "shared", "public", "uploads")
	if err := os.MkdirAll(filepath.Dir(link), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(nfs, link); err != nil {
		t.Fatal(err)
	}
	e := engine(a)
	c := a.Repo.Head()
	prepare(t, e, id(1, c), c)
	if err := e.Activate(context.Background(), id(1, c)); err != nil {
		t.Fatal(err)
	}
	if got, err := os.Readlink(link); err != nil || got != nfs {
		t.Errorf("shared/public/uploads → %q, %v; want the link to %s kept", got, err, nfs)
	}
	wantFiles(t, data)
	wantFiles(t, map[string]string{filepath.Join(a.DeployTo, "current", "public", "uploads", "cat.jpg"): "meow"})
}

// TestSharedEntryCommittedAsSymlink: the repository ships the shared path
// itself as a symlink out of the release (.env -> a file elsewhere). The
// link in the release is replaced by drover's; its target is untouched.
func TestSharedEntryCommittedAsSymlink(t *testing.T) {
	outside := filepath.Join(t.TempDir(), "secret.env")
	precious := map[string]string{outside: "SECRET=outside\n"}
	writeFiles(t, precious)
	a := apptest.New(t, apptest.Options{NoService: true})
	if err := os.Symlink(outside, filepath.Join(a.Repo.Dir, ".env")); err != nil {
		t.Fatal(err)
	}
	a.Repo.Git("add", ".env")
	c := a.Repo.Commit(".env is a link", nil)
	e := engine(a)
	prepare(t, e, id(1, c), c)
	wantFiles(t, precious)
	link, err := os.Readlink(filepath.Join(a.DeployTo, "releases", id(1, c), ".env"))
	if err != nil || link != "../../shared/.env" {
		t.Errorf("release .env → %q, %v; want drover's link to shared/.env", link, err)
	}
}
