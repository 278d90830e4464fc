package source

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// ErrNotFound is wrapped when a branch, tag or commit does not exist in the
// repository.
var ErrNotFound = errors.New("not found in repository")

// Mirror is a bare git mirror of an app's repository, kept on a host (or on
// the deployer's machine to resolve specs) and updated by incremental fetch.
type Mirror struct {
	Dir string // the bare repository, e.g. <deploy_to>/repo
	URL string // where to fetch from
}

// Export methods: how a commit is written into a release directory.
const (
	ExportArchive  = "archive"  // git archive, unpacked in-process
	ExportCheckout = "checkout" // git checkout-index from a throwaway index
)

// git runs git with args in the mirror and returns its trimmed stdout.
func (m *Mirror) git(ctx context.Context, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, "git", append([]string{"--git-dir", m.Dir}, args...)...)
	cmd.Env = append(os.Environ(), "GIT_TERMINAL_PROMPT=0", "LC_ALL=C")
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		msg := strings.TrimSpace(stderr.String())
		if msg == "" {
			msg = err.Error()
		}
		return "", fmt.Errorf("git %s: %s", args[0], msg)
	}
	return strings.TrimSpace(stdout.String()), nil
}

// Fetch creates the mirror if it is missing and fetches every branch and
// tag from URL. Later fetches are incremental.
func (m *Mirror) Fetch(ctx context.Context) error {
	if _, err := os.Stat(filepath.Join(m.Dir, "HEAD")); err != nil {
		if err := os.MkdirAll(m.Dir, 0o755); err != nil {
			return fmt.Errorf("create mirror: %w", err)
		}
		if _, err := m.git(ctx, "init", "--bare", "--quiet"); err != nil {
			return err
		}
	}
	if _, err := m.git(ctx, "fetch", "--quiet", "--prune", "--force", "--no-write-fetch-head", m.URL,
		"+refs/heads/*:refs/heads/*", "+refs/tags/*:refs/tags/*"); err != nil {
		return fmt.Errorf("fetch %s: %w", m.URL, err)
	}
	return nil
}

// Resolve turns a spec into the full commit it names in the mirror.
func (m *Mirror) Resolve(ctx context.Context, s Spec) (string, error) {
	var rev string
	switch s.Kind {
	case KindBranch:
		rev = "refs/heads/" + s.Name
	case KindTag:
		rev = "refs/tags/" + s.Name
	case KindCommit:
		rev = s.Name
	default:
		return "", fmt.Errorf("%w: unknown kind %q", ErrBadSpec, s.Kind)
	}
	sha, err := m.git(ctx, "rev-parse", "--verify", "--quiet", rev+"^{commit}")
	if err != nil || sha == "" {
		return "", fmt.Errorf("%s: %w of %s", s, ErrNotFound, m.URL)
	}
	return sha, nil
}

// Has reports whether the mirror holds commit sha.
func (m *Mirror) Has(ctx context.Context, sha string) bool {
	_, err := m.git(ctx, "cat-file", "-e", sha+"^{commit}")
	return err == nil
}

// Ensure makes sure the mirror holds commit sha, fetching only when it
// does not.
func (m *Mirror) Ensure(ctx context.Context, sha string) error {
	if m.Has(ctx, sha) {
		return nil
	}
	if err := m.Fetch(ctx); err != nil {
		return err
	}
	if !m.Has(ctx, sha) {
		return fmt.Errorf("commit %s: %w %s", sha, ErrNotFound, m.URL)
	}
	return nil
}

// Export writes the tree of commit sha into dir, which must not exist yet
// or be empty.
func (m *Mirror) Export(ctx context.Context, sha, dir, method string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("export: %w", err)
	}
	switch method {
	case ExportCheckout:
		return m.exportCheckout(ctx, sha, dir)
	case ExportArchive, "":
		return m.exportArchive(ctx, sha, dir)
	default:
		return fmt.Errorf("export: unknown method %q", method)
	}
}

func (m *Mirror) exportCheckout(ctx context.Context, sha, dir string) error {
	index, err := os.CreateTemp("", "drover-index-*")
	if err != nil {
		return fmt.Errorf("export: %w", err)
	}
	index.Close()
	defer os.Remove(index.Name())
	abs, err := filepath.Abs(dir)
	if err != nil {
		return err
	}
	run := func(args ...string) error {
		cmd := exec.CommandContext(ctx, "git", append([]string{"--git-dir", m.Dir, "--work-tree", abs}, args...)...)
		cmd.Env = append(os.Environ(), "GIT_INDEX_FILE="+index.Name(), "LC_ALL=C")
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		if err := cmd.Run(); err != nil {
			return fmt.Errorf("export %s: git %s: %s", sha, args[0], strings.TrimSpace(stderr.String()))
		}
		return nil
	}
	if err := run("read-tree", sha); err != nil {
		return err
	}
	return run("checkout-index", "--all", "--force")
}

func (m *Mirror) exportArchive(ctx context.Context, sha, dir string) error {
	cmd := exec.CommandContext(ctx, "git", "--git-dir", m.Dir, "archive", "--format=tar", sha)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		return err
	}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("export %s: %w", sha, err)
	}
	xerr := Untar(out, dir)
	if xerr != nil {
		_, _ = io.Copy(io.Discard, out)
	}
	if err := cmd.Wait(); err != nil {
		return fmt.Errorf("export %s: git archive: %s", sha, strings.TrimSpace(stderr.String()))
	}
	if xerr != nil {
		return fmt.Errorf("export %s: %w", sha, xerr)
	}
	return nil
}

// Untar unpacks a tar stream into dir. It refuses entries that would land
// outside dir.
func Untar(r io.Reader, dir string) error {
	tr := tar.NewReader(r)
	buf := make([]byte, 128<<10)
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return fmt.Errorf("read archive: %w", err)
		}
		name := filepath.Clean(hdr.Name)
		if name == "." || hdr.Typeflag == tar.TypeXGlobalHeader {
			continue
		}
		if filepath.IsAbs(name) || name == ".." || strings.HasPrefix(name, "../") {
			return fmt.Errorf("archive entry %q leaves the release directory", hdr.Name)
		}
		target := filepath.Join(dir, name)
		switch hdr.Typeflag {
		case tar.TypeDir:
			if err := os.MkdirAll(target, 0o755); err != nil {
				return err
			}
		case tar.TypeReg:
			if err := writeFile(target, tr, os.FileMode(hdr.Mode).Perm(), buf); err != nil {
				return err
			}
		case tar.TypeSymlink:
			if err := os.Symlink(hdr.Linkname, target); err != nil {
				return err
			}
		default:
			return fmt.Errorf("archive entry %q has unsupported type %c", hdr.Name, hdr.Typeflag)
		}
	}
}

func writeFile(path string, r io.Reader, mode os.FileMode, buf []byte) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
	if errors.Is(err, os.ErrNotExist) {
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			return err
		}
		f, err = os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
	}
	if err != nil {
		return err
	}
	if _, err := io.CopyBuffer(f, r, buf); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
