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
	"sync"
	"syscall"
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

// AllowedProtocols are the git transports drover fetches over, in
// GIT_ALLOW_PROTOCOL's syntax. Anything else (ext::, fd::, remote helpers)
// is refused by git itself, whatever the user's git config allows: a repo
// URL in drover.yml must never run a program on the machine that fetches.
const AllowedProtocols = "file:git:http:https:ssh"

// gitEnv is the environment of every git drover runs: no prompts, stable
// messages, and only AllowedProtocols.
func gitEnv(extra ...string) []string {
	return append(os.Environ(), append([]string{"GIT_TERMINAL_PROMPT=0", "LC_ALL=C", "GIT_ALLOW_PROTOCOL=" + AllowedProtocols}, extra...)...)
}

// CheckRepo refuses a repo value git would read as an option
// ("--upload-pack=CMD" runs CMD).
func CheckRepo(url string) error {
	if strings.HasPrefix(url, "-") {
		return fmt.Errorf("repo %q may not start with '-': git would read it as an option; give a URL (https://..., git@host:path.git) or a path", url)
	}
	return nil
}

// checkRev refuses a revision git would read as an option.
func checkRev(rev string) error {
	if rev == "" || strings.HasPrefix(rev, "-") {
		return fmt.Errorf("bad revision %q", rev)
	}
	return nil
}

// git runs git with args in the mirror and returns its trimmed stdout.
func (m *Mirror) git(ctx context.Context, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, "git", append([]string{"--git-dir=" + m.Dir}, args...)...)
	cmd.Env = gitEnv()
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
	if err := CheckRepo(m.URL); err != nil {
		return fmt.Errorf("fetch: %w", err)
	}
	if _, err := os.Stat(filepath.Join(m.Dir, "HEAD")); err != nil {
		if err := os.MkdirAll(m.Dir, 0o755); err != nil {
			return fmt.Errorf("create mirror: %w", err)
		}
		if _, err := m.git(ctx, "init", "--bare", "--quiet"); err != nil {
			return err
		}
	}
	if _, err := m.git(ctx, "fetch", "--quiet", "--prune", "--force", "--no-write-fetch-head", "--", m.URL,
		"+refs/heads/*:refs/heads/*", "+refs/tags/*:refs/tags/*"); err != nil {
		m.removePartialPacks()
		return fmt.Errorf("fetch %s: %w", m.URL, err)
	}
	return nil
}

// removePartialPacks deletes what an interrupted fetch leaves in the
// mirror (a full disk, a killed git), so that the space comes back.
func (m *Mirror) removePartialPacks() {
	for _, pattern := range []string{"objects/pack/tmp_*", "objects/incoming-*", "objects/tmp_*", "objects/??/tmp_obj_*"} {
		matches, _ := filepath.Glob(filepath.Join(m.Dir, pattern))
		for _, p := range matches {
			os.RemoveAll(p)
		}
	}
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
	if err := checkRev(rev); err != nil {
		return "", fmt.Errorf("%s: %w", s, err)
	}
	sha, err := m.git(ctx, "rev-parse", "--verify", "--quiet", "--end-of-options", rev+"^{commit}")
	if err != nil || sha == "" {
		return "", fmt.Errorf("%s: %w of %s", s, ErrNotFound, m.URL)
	}
	return sha, nil
}

// Has reports whether the mirror holds commit sha.
func (m *Mirror) Has(ctx context.Context, sha string) bool {
	if checkRev(sha) != nil {
		return false
	}
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

// ReadFile returns the content of path at commit sha, or an error wrapping
// ErrNotFound when the commit has no such file.
func (m *Mirror) ReadFile(ctx context.Context, sha, path string) ([]byte, error) {
	if err := checkRev(sha); err != nil {
		return nil, fmt.Errorf("%s at %s: %w", path, sha, err)
	}
	cmd := exec.CommandContext(ctx, "git", "--git-dir="+m.Dir, "cat-file", "blob", sha+":"+path)
	cmd.Env = gitEnv()
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("%s at %s: %w", path, sha, ErrNotFound)
	}
	return stdout.Bytes(), nil
}

// Export writes the tree of commit sha into dir, which must not exist yet
// or be empty.
func (m *Mirror) Export(ctx context.Context, sha, dir, method string) error {
	if err := checkRev(sha); err != nil {
		return fmt.Errorf("export: %w", err)
	}
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
		cmd := exec.CommandContext(ctx, "git", append([]string{"--git-dir=" + m.Dir, "--work-tree=" + abs}, args...)...)
		cmd.Env = gitEnv("GIT_INDEX_FILE=" + index.Name())
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		if err := cmd.Run(); err != nil {
			return fmt.Errorf("export %s: git %s: %s", sha, args[0], strings.TrimSpace(stderr.String()))
		}
		return nil
	}
	if err := run("read-tree", "--end-of-options", sha); err != nil {
		return err
	}
	return run("checkout-index", "--all", "--force")
}

func (m *Mirror) exportArchive(ctx context.Context, sha, dir string) error {
	cmd := exec.CommandContext(ctx, "git", "--git-dir="+m.Dir, "archive", "--format=tar", "--end-of-options", sha)
	cmd.Env = gitEnv()
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
// outside dir. Regular files are written by a few goroutines while the
// stream is read, with raw syscalls: unpacking many small files is bound by
// open/write/close, not by reading.
func Untar(r io.Reader, dir string) error {
	tr := tar.NewReader(r)
	w := newWriters(4)
	made := map[string]bool{dir: true}
	mkdir := func(d string) error {
		if made[d] {
			return nil
		}
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
		made[d] = true
		return nil
	}
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			w.wait()
			return fmt.Errorf("read archive: %w", err)
		}
		name := filepath.Clean(hdr.Name)
		if name == "." || hdr.Typeflag == tar.TypeXGlobalHeader {
			continue
		}
		if filepath.IsAbs(name) || name == ".." || strings.HasPrefix(name, "../") {
			w.wait()
			return fmt.Errorf("archive entry %q leaves the release directory", hdr.Name)
		}
		target := filepath.Join(dir, name)
		switch hdr.Typeflag {
		case tar.TypeDir:
			err = mkdir(target)
		case tar.TypeReg:
			if err = mkdir(filepath.Dir(target)); err == nil {
				data := make([]byte, hdr.Size)
				if _, err = io.ReadFull(tr, data); err == nil {
					w.write(target, data, uint32(os.FileMode(hdr.Mode).Perm()))
				}
			}
		case tar.TypeSymlink:
			if err = mkdir(filepath.Dir(target)); err == nil {
				err = os.Symlink(hdr.Linkname, target)
			}
		default:
			err = fmt.Errorf("archive entry %q has unsupported type %c", hdr.Name, hdr.Typeflag)
		}
		if err != nil {
			w.wait()
			return err
		}
	}
	return w.wait()
}

// writers writes files on a few goroutines and keeps the first error.
type writers struct {
	jobs chan fileJob
	wg   sync.WaitGroup
	mu   sync.Mutex
	err  error
}

type fileJob struct {
	path string
	data []byte
	mode uint32
}

func newWriters(n int) *writers {
	w := &writers{jobs: make(chan fileJob, 64)}
	for range n {
		w.wg.Add(1)
		go func() {
			defer w.wg.Done()
			for j := range w.jobs {
				if err := writeFileRaw(j.path, j.data, j.mode); err != nil {
					w.mu.Lock()
					if w.err == nil {
						w.err = err
					}
					w.mu.Unlock()
				}
			}
		}()
	}
	return w
}

func (w *writers) write(path string, data []byte, mode uint32) {
	w.jobs <- fileJob{path, data, mode}
}

func (w *writers) wait() error {
	close(w.jobs)
	w.wg.Wait()
	return w.err
}

// writeFileRaw creates path with data, bypassing os.File's poller setup.
func writeFileRaw(path string, data []byte, mode uint32) error {
	fd, err := syscall.Open(path, syscall.O_WRONLY|syscall.O_CREAT|syscall.O_EXCL|syscall.O_CLOEXEC, mode)
	if err != nil {
		return &os.PathError{Op: "create", Path: path, Err: err}
	}
	for len(data) > 0 {
		n, err := syscall.Write(fd, data)
		if err != nil {
			syscall.Close(fd)
			return &os.PathError{Op: "write", Path: path, Err: err}
		}
		data = data[n:]
	}
	if err := syscall.Close(fd); err != nil {
		return &os.PathError{Op: "close", Path: path, Err: err}
	}
	return nil
}
