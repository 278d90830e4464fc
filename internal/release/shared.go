package release

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/drover/drover/internal/config"
)

// sharedEntry is one path of drover.yml's shared: block.
type sharedEntry struct {
	rel   string // clean, relative to the release and to shared/
	isDir bool
	// within names the shared dir that already holds this entry: it is
	// shared through that dir's link and gets no link of its own.
	within string
}

// sharedEntries lists the shared paths, each with the shared dir that
// already covers it, if any. A path under a shared file is an error.
func sharedEntries(s config.Shared) ([]sharedEntry, error) {
	var out []sharedEntry
	for _, d := range s.Dirs {
		out = append(out, sharedEntry{rel: filepath.Clean(d), isDir: true})
	}
	for _, f := range s.Files {
		out = append(out, sharedEntry{rel: filepath.Clean(f)})
	}
	for i := range out {
		for _, o := range out {
			if !strings.HasPrefix(out[i].rel, o.rel+"/") {
				continue
			}
			if !o.isDir {
				return nil, fmt.Errorf("shared path %s is inside shared file %s; remove one of them from drover.yml", out[i].rel, o.rel)
			}
			if out[i].within == "" || len(o.rel) < len(out[i].within) {
				out[i].within = o.rel
			}
		}
	}
	return out, nil
}

// linkShared creates each shared path under shared/ when it is missing and
// links it into the release dir. What exists under shared/ is never moved,
// emptied or replaced (a shared path that is a symlink, to a mount say, is
// used as it is), and nothing whose real path lies outside dir is removed:
// every change in the release goes through an os.Root on dir, which refuses
// a path that a symlink leads out of it.
func (e *Engine) linkShared(dir string) error {
	entries, err := sharedEntries(e.App.Shared)
	if err != nil {
		return err
	}
	root, err := os.OpenRoot(dir)
	if err != nil {
		return err
	}
	defer root.Close()
	for _, en := range entries {
		kind := "file"
		if en.isDir {
			kind = "dir"
		}
		if err := e.ensureShared(en); err != nil {
			return fmt.Errorf("shared %s %s: %w", kind, en.rel, err)
		}
		if en.within != "" {
			continue // shared already through the link of en.within
		}
		if err := e.linkInto(root, dir, en.rel); err != nil {
			return fmt.Errorf("link shared %s %s: %w", kind, en.rel, err)
		}
	}
	return nil
}

// ensureShared creates shared/<rel> when it is missing and checks that
// what is there has the kind drover.yml says. It only ever creates.
func (e *Engine) ensureShared(en sharedEntry) error {
	src := filepath.Join(e.Layout.Shared(), en.rel)
	fi, err := os.Stat(src) // follows a symlink: shared/uploads -> /mnt/nfs is fine
	switch {
	case errors.Is(err, os.ErrNotExist):
		if target, lerr := os.Readlink(src); lerr == nil {
			return fmt.Errorf("shared/%s is a symlink to %s, which does not exist; it is left as it is: mount or create %s, or remove the link", en.rel, target, target)
		}
		if err := os.MkdirAll(filepath.Dir(src), 0o755); err != nil {
			return err
		}
		if en.isDir {
			if err := os.Mkdir(src, 0o755); err != nil && !errors.Is(err, os.ErrExist) {
				return err
			}
			return nil
		}
		f, err := os.OpenFile(src, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o640)
		if err != nil && !errors.Is(err, os.ErrExist) {
			return err
		}
		if f != nil {
			return f.Close()
		}
		return nil
	case err != nil:
		return err
	case en.isDir && !fi.IsDir():
		return fmt.Errorf("shared/%s exists and is not a directory; it is left as it is: move it or list it under shared.files", en.rel)
	case !en.isDir && fi.IsDir():
		return fmt.Errorf("shared/%s exists and is a directory; it is left as it is: move it or list it under shared.dirs", en.rel)
	}
	return nil
}

// linkInto replaces rel in the release (what the repository shipped there)
// with a symlink to shared/<rel>. root confines every change to dir.
func (e *Engine) linkInto(root *os.Root, dir, rel string) error {
	if parent := filepath.Dir(rel); parent != "." {
		if err := root.MkdirAll(parent, 0o755); err != nil {
			return escapeHint(dir, rel, err)
		}
	}
	if _, err := root.Lstat(rel); err == nil {
		if err := root.RemoveAll(rel); err != nil {
			return escapeHint(dir, rel, err)
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		return escapeHint(dir, rel, err)
	}
	// The link is relative, from where it really lies (a parent may be a
	// symlink inside the release) to shared/, so deploy_to can move.
	target := filepath.Join(e.Layout.Shared(), rel)
	realParent, err1 := filepath.EvalSymlinks(filepath.Join(dir, filepath.Dir(rel)))
	realShared, err2 := filepath.EvalSymlinks(e.Layout.Shared())
	if err1 == nil && err2 == nil {
		if r, err := filepath.Rel(realParent, filepath.Join(realShared, rel)); err == nil {
			target = r
		}
	}
	if err := root.Symlink(target, rel); err != nil {
		return escapeHint(dir, rel, err)
	}
	return nil
}

// escapeHint explains err when a symlink committed in the repository sits
// on the way to rel.
func escapeHint(dir, rel string, err error) error {
	p := dir
	for _, c := range strings.Split(filepath.Dir(rel), "/") {
		p = filepath.Join(p, c)
		fi, lerr := os.Lstat(p)
		if lerr != nil {
			break
		}
		if fi.Mode()&os.ModeSymlink != 0 {
			target, _ := os.Readlink(p)
			r, _ := filepath.Rel(dir, p)
			return fmt.Errorf("%s in the release is a symlink committed in the repository (-> %s); drover never changes anything through it: list %s itself under shared, or commit a real directory (%w)", r, target, r, err)
		}
	}
	return err
}
