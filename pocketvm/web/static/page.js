// The pocketvm page: the VM's screen (noVNC over /TOKEN/rfb) and its serial
// console (xterm.js over /TOKEN/console), and whether the VM still runs.
import RFB from '../novnc/core/rfb.js';

const base = location.pathname.replace(/\/$/, '');
const wsBase = (location.protocol === 'https:' ? 'wss://' : 'ws://') + location.host + base;
const $ = (id) => document.getElementById(id);

function showState(running, reason) {
    const state = $('state');
    state.textContent = running ? 'running' : 'stopped';
    state.className = running ? 'running' : 'stopped';
    if (!running) {
        $('stopped').hidden = false;
        $('stopped').textContent = 'The VM has stopped' + (reason ? ' (' + reason + ')' : '') + '.';
        document.title = $('name').textContent + ' - pocketvm (stopped)';
    }
}

// --- screen --------------------------------------------------------------------
const rfb = new RFB($('screen'), wsBase + '/rfb', { wsProtocols: ['binary'] });
rfb.scaleViewport = false;   // 1:1, so pointer positions map exactly to the guest's screen
rfb.resizeSession = false;
rfb.focusOnClick = true;
rfb.showDotCursor = true;    // a dot where the guest shows no pointer of its own (the text console)
rfb.addEventListener('connect', () => { $('screen-state').textContent = ''; });
rfb.addEventListener('disconnect', () => { $('screen-state').textContent = 'disconnected'; });

// --- serial console ------------------------------------------------------------
const term = new Terminal({ cols: 80, rows: 40, scrollback: 5000, fontSize: 13 });
term.open($('terminal'));
const consoleWs = new WebSocket(wsBase + '/console');
consoleWs.binaryType = 'arraybuffer';
let stopped = false;
consoleWs.onmessage = (ev) => {
    if (typeof ev.data === 'string') {
        const st = JSON.parse(ev.data);
        $('name').textContent = st.name;
        if (st.running) document.title = st.name + ' - pocketvm';
        if (st.running) { showState(true); } else { stopped = true; showState(false, st.stopped); }
    } else {
        term.write(new Uint8Array(ev.data));
    }
};
consoleWs.onclose = () => { if (!stopped) { stopped = true; showState(false, 'the connection to pocketvm was lost'); } };
const encoder = new TextEncoder();
term.onData((data) => { if (consoleWs.readyState === WebSocket.OPEN) consoleWs.send(encoder.encode(data)); });

window.pocketvm = { rfb, term, isStopped: () => stopped };
