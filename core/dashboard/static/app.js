// hookyard dashboard: copy buttons, auto-refresh of live tables, confirmations. No build step.
(function () {
  "use strict";
  var main = document.querySelector("main");
  var csrf = (main && main.dataset.csrf) || "";

  function fetchKey(source) {
    // the full key never sits in the page: ask for it (POST + CSRF token) when copying
    return fetch("/ui/sources/" + encodeURIComponent(source) + "/write-key", {
      method: "POST", credentials: "same-origin", headers: { "X-CSRF-Token": csrf }
    }).then(function (r) {
      if (!r.ok) { throw new Error("HTTP " + r.status); }
      return r.text();
    });
  }

  function copy(text) {
    if (navigator.clipboard && window.isSecureContext) {
      return navigator.clipboard.writeText(text).catch(function () { fallbackCopy(text); });
    }
    fallbackCopy(text);
    return Promise.resolve();
  }

  function fallbackCopy(text) {
    var area = document.createElement("textarea");
    area.value = text;
    area.className = "offscreen";
    document.body.appendChild(area);
    area.select();
    document.execCommand("copy");
    area.remove();
  }

  function done(button) {
    var note = button.nextElementSibling;
    if (note && note.classList.contains("copied")) {
      note.hidden = false;
      setTimeout(function () { note.hidden = true; }, 2000);
    }
  }

  document.querySelectorAll("button.copy-key, button.copy-curl").forEach(function (button) {
    button.addEventListener("click", function () {
      var source = button.dataset.source;
      fetchKey(source).then(function (key) {
        if (button.classList.contains("copy-key")) { return copy(key); }
        var pre = document.querySelector("pre.curl[data-source='" + CSS.escape(source) + "']");
        return copy(pre.textContent.split("$HOOKYARD_WRITE_KEY").join(key));
      }).then(function () { done(button); }, function (err) { alert("Copy failed: " + err.message); });
    });
  });

  document.querySelectorAll("form[data-confirm]").forEach(function (form) {
    form.addEventListener("submit", function (event) {
      if (!window.confirm(form.dataset.confirm)) { event.preventDefault(); }
    });
  });

  var live = document.getElementById("live");
  var toggle = document.getElementById("autorefresh");
  function stopRefresh(timer, why) {
    // signed out (here or in another tab) or the session expired: say so instead of
    // leaving a table that silently stopped updating (once: a slow answer may come late)
    clearInterval(timer);
    if (toggle.disabled) { return; }
    toggle.checked = false;
    toggle.disabled = true;
    var note = document.createElement("span");
    note.className = "flash error refresh-stopped";
    note.setAttribute("role", "status");
    note.textContent = why;
    toggle.parentNode.appendChild(note);
  }
  if (live && toggle && live.dataset.refresh) {
    var busy = false;  // a slow page is not asked for again before it came (scale audit:
    // a page taking seconds, asked every 3 s, kept a core of the server busy)
    var timer = setInterval(function () {
      if (busy || !toggle.checked || document.hidden) { return; }
      busy = true;
      fetch(location.href, { credentials: "same-origin" }).then(function (r) {
        if (r.redirected || r.status === 401 || r.status === 403) {
          stopRefresh(timer, "auto-refresh stopped: you are signed out. Reload the page to sign in.");
          return null;
        }
        return r.ok ? r.text() : null;
      }).then(function (html) {
        if (!html) { return; }
        var fresh = new DOMParser().parseFromString(html, "text/html").getElementById("live");
        if (fresh) { live.innerHTML = fresh.innerHTML; }
      }).catch(function () { /* offline for a moment: try again next tick */ })
        .then(function () { busy = false; });
    }, Number(live.dataset.refresh));
  }
})();
