package source

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/drover/drover/internal/testenv/gitrepo"
)

func TestParseSpec(t *testing.T) {
	good := map[string]Spec{
		"branch:main":          {KindBranch, "main"},
		"branch:topics/x-1":    {KindBranch, "topics/x-1"},
		"tag:v1.2.3":           {KindTag, "v1.2.3"},
		"commit:3F9C2AB":       {KindCommit, "3f9c2ab"},
		"commit:" + sha40("a"): {KindCommit, sha40("a")},
	}
	for in, want := range good {
		got, err := ParseSpec(in)
		if err != nil || got != want {
			t.Errorf("ParseSpec(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	bad := map[string]string{
		"":              "empty",
		"main":          "no kind",
		"tag :x":        "no spaces",
		"tag: x":        "no spaces",
		"tag:":          "nothing after",
		"release:v1":    "unknown kind",
		"commit:xyz123": "hex",
		"commit:ab":     "hex",
		"branch:a..b":   "..",
		"branch:-x":     "start with '-'",
		"tag:v1.lock":   ".lock",
		"branch:a b":    "may not contain",
		"branch:a~1":    "may not contain",
	}
	for in, want := range bad {
		_, err := ParseSpec(in)
		if err == nil || !errors.Is(err, ErrBadSpec) || !strings.Contains(err.Error(), want) {
			t.Errorf("ParseSpec(%q) error = %v; want ErrBadSpec saying %q", in, err, want)
		}
	}
}

func sha40(c string) string { return strings.Repeat(c, 40) }

func FuzzParseSpec(f *testing.F) {
	for _, s := range []string{"branch:main", "tag:v1", "commit:abcd", "tag :x", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		spec, err := ParseSpec(s)
		if err != nil {
			return
		}
		if strings.ContainsAny(spec.Name, " \t\n:") || spec.Name == "" {
			t.Fatalf("accepted %q as %v", s, spec)
		}
		again, err := ParseSpec(spec.String())
		if err != nil || again != spec {
			t.Fatalf("round trip of %q: %v, %v", s, again, err)
		}
	})
}

func TestMirror(t *testing.T) {
	ctx := context.Background()
	repo := gitrepo.New(t)
	c1 := repo.Commit("one", map[string]string{"a.txt": "one\n", "bin/run": "#!/bin/sh\necho hi\n", "dir/b.txt": "b"})
	repo.Git("tag", "v1")
	repo.Git("branch", "staging")
	c2 := repo.Commit("two", map[string]string{"a.txt": "two\n"})
	repo.Git("tag", "-a", "v2", "-m", "annotated")
	if err := os.Symlink("a.txt", filepath.Join(repo.Dir, "link")); err != nil {
		t.Fatal(err)
	}
	c3 := repo.Commit("three", nil)

	m := &Mirror{Dir: filepath.Join(t.TempDir(), "repo"), URL: repo.Dir}
	if err := m.Fetch(ctx); err != nil {
		t.Fatal(err)
	}
	for spec, want := range map[string]string{"branch:main": c3, "branch:staging": c1, "tag:v1": c1, "tag:v2": c2, "commit:" + c2[:7]: c2} {
		s, _ := ParseSpec(spec)
		got, err := m.Resolve(ctx, s)
		if err != nil || got != want {
			t.Errorf("Resolve(%s) = %s, %v; want %s", spec, got, err, want)
		}
	}
	for _, spec := range []string{"branch:nope", "tag:v9", "commit:deadbeef"} {
		s, _ := ParseSpec(spec)
		if _, err := m.Resolve(ctx, s); !errors.Is(err, ErrNotFound) {
			t.Errorf("Resolve(%s) error %v, want ErrNotFound", spec, err)
		}
	}

	// A new commit upstream arrives with Ensure's incremental fetch.
	c4 := repo.Commit("four", map[string]string{"new.txt": "new"})
	if m.Has(ctx, c4) {
		t.Fatal("mirror has a commit it never fetched")
	}
	if err := m.Ensure(ctx, c4); err != nil {
		t.Fatal(err)
	}
	if err := m.Ensure(ctx, sha40("b")); !errors.Is(err, ErrNotFound) {
		t.Errorf("Ensure of a missing commit: %v", err)
	}

	for _, method := range []string{ExportArchive, ExportCheckout} {
		t.Run(method, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "rel")
			if err := m.Export(ctx, c4, dir, method); err != nil {
				t.Fatal(err)
			}
			if b, _ := os.ReadFile(filepath.Join(dir, "a.txt")); string(b) != "two\n" {
				t.Errorf("a.txt = %q", b)
			}
			if fi, err := os.Stat(filepath.Join(dir, "bin/run")); err != nil || fi.Mode().Perm()&0o100 == 0 {
				t.Errorf("bin/run not executable: %v %v", fi, err)
			}
			if target, err := os.Readlink(filepath.Join(dir, "link")); err != nil || target != "a.txt" {
				t.Errorf("link = %q, %v", target, err)
			}
			if _, err := os.Stat(filepath.Join(dir, ".git")); !os.IsNotExist(err) {
				t.Errorf("release has a .git: %v", err)
			}
		})
	}
}

func TestUntarRefusesEscape(t *testing.T) {
	// A hand-made tar whose entry climbs out of the release directory.
	var buf strings.Builder
	tw := newTestTar(&buf, "../escape.txt", "x")
	_ = tw
	err := Untar(strings.NewReader(buf.String()), t.TempDir())
	if err == nil || !strings.Contains(err.Error(), "leaves the release directory") {
		t.Fatalf("Untar = %v", err)
	}
}

// TestFetchNeverRunsCommandsFromRepo: a repo value is data, never an
// option or a transport that runs a program on the deployer's machine.
func TestFetchNeverRunsCommandsFromRepo(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	for name, url := range map[string]string{
		"upload-pack option":        "--upload-pack=touch " + filepath.Join(dir, "upload-pack") + ";",
		"ext transport":             "ext::sh -c touch% " + filepath.Join(dir, "ext"),
		"ext with a leading option": "-c protocol.ext.allow=always ext::sh -c touch% " + filepath.Join(dir, "ext2"),
	} {
		t.Run(name, func(t *testing.T) {
			m := &Mirror{Dir: filepath.Join(t.TempDir(), "repo"), URL: url}
			err := m.Fetch(ctx)
			if err == nil {
				t.Fatalf("Fetch(%q) succeeded", url)
			}
			t.Log(err)
		})
	}
	// An ext:: URL allowed by the user's own git config is still refused.
	t.Setenv("GIT_CONFIG_COUNT", "1")
	t.Setenv("GIT_CONFIG_KEY_0", "protocol.ext.allow")
	t.Setenv("GIT_CONFIG_VALUE_0", "always")
	m := &Mirror{Dir: filepath.Join(t.TempDir(), "repo"), URL: "ext::sh -c touch% " + filepath.Join(dir, "ext3")}
	if err := m.Fetch(ctx); err == nil {
		t.Fatal("Fetch of an ext:: URL succeeded")
	}
	for _, f := range []string{"upload-pack", "ext", "ext2", "ext3"} {
		if _, err := os.Stat(filepath.Join(dir, f)); err == nil {
			t.Errorf("git ran a command from the repo URL: %s exists", f)
		}
	}
	// A repo starting with '-' is refused by name before git runs.
	m = &Mirror{Dir: filepath.Join(t.TempDir(), "repo"), URL: "--upload-pack=true"}
	if err := m.Fetch(ctx); err == nil || !strings.Contains(err.Error(), "may not start with '-'") {
		t.Errorf("Fetch error = %v; want it to refuse the leading '-'", err)
	}
}
