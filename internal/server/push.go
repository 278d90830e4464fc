package server

import (
	"errors"
	"net/http"
	"strconv"
	"time"

	"github.com/drover/drover/internal/api"
	"github.com/drover/drover/internal/control"
)

// Push deploys in the environment's queue: a `drover deploy` that knows
// this server asks for the lease (POST /api/v1/push), waits for it
// (POST /api/v1/push/{id}/wait?wait=30s, a long-poll capped by MaxWait)
// and reports its hosts' progress under its token, which renews the lease
// (POST /api/v1/push/{id}/progress?token=N; 409 once the lease is lost).

func (s *Server) beginPush(w http.ResponseWriter, r *http.Request) {
	var req api.BeginPush
	if !decode(w, r, &req) {
		return
	}
	if err := errors.Join(validName("app", req.App), validName("env", req.Env)); err != nil {
		writeError(w, http.StatusBadRequest, "bad request", err.Error())
		return
	}
	out, err := s.control.BeginPush(r.Context(), req)
	if err != nil {
		s.pushError(w, err)
		return
	}
	s.audit(r.Context(), from(r), "push.begin", map[string]any{"rollout": out.ID, "app": req.App, "env": req.Env, "holder": req.Holder, "release": req.Release})
	writeJSON(w, http.StatusCreated, out)
}

func (s *Server) waitPush(w http.ResponseWriter, r *http.Request) {
	id, ok := pathID(w, r)
	if !ok {
		return
	}
	wait := time.Duration(0)
	if ws := r.URL.Query().Get("wait"); ws != "" {
		d, err := time.ParseDuration(ws)
		if err != nil || d < 0 {
			writeError(w, http.StatusBadRequest, "bad request", "wait must be a duration like 30s")
			return
		}
		wait = min(d, s.MaxWait)
	}
	out, err := s.control.WaitPush(r.Context(), id, wait)
	if err != nil {
		if r.Context().Err() != nil {
			return // the deployer hung up; its ticket lapses unless it asks again
		}
		s.pushError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, out)
}

func (s *Server) pushProgress(w http.ResponseWriter, r *http.Request) {
	id, ok := pathID(w, r)
	if !ok {
		return
	}
	token, err := strconv.ParseInt(r.URL.Query().Get("token"), 10, 64)
	if err != nil || token < 0 {
		writeError(w, http.StatusBadRequest, "bad request", "token must be the lease's fencing token (?token=N), or 0 to leave the queue")
		return
	}
	var req api.PushProgress
	if !decode(w, r, &req) {
		return
	}
	out, err := s.control.PushProgress(r.Context(), id, token, req)
	if err != nil {
		s.pushError(w, err)
		return
	}
	if req.Done {
		s.audit(r.Context(), from(r), "push.done", map[string]any{"rollout": id, "state": out.State, "error": out.Error})
	}
	writeJSON(w, http.StatusOK, out)
}

// pushError maps a control error of a push deploy: 409 when the lease is
// no longer the deployer's, else as the store's.
func (s *Server) pushError(w http.ResponseWriter, err error) {
	if errors.Is(err, control.ErrLeaseLost) {
		writeError(w, http.StatusConflict, "deploy lease lost", err.Error())
		return
	}
	s.storeError(w, err)
}
