'use strict';
// Preloaded with `node -r`: caf_platform listens with `app.listen(port)`, on every interface.
// The benchmark's servers listen on loopback only, so a listen given just a port (or port and
// callback) gets host 127.0.0.1.
const net = require('net');
const listen = net.Server.prototype.listen;
net.Server.prototype.listen = function(...args) {
    if (typeof args[0] === 'number' &&
        (args.length === 1 || typeof args[1] === 'function')) {
        args.splice(1, 0, '127.0.0.1');
    }
    return listen.apply(this, args);
};
