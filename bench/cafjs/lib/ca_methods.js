'use strict';
// The counter app of spine-bench's `ca` workload, the same as ca-runtime's demo-counter:
// `increment(n = 1)` adds n to the count in the CA's checkpointed state and returns it.
const caf = require('caf_core');

exports.methods = {
    async __ca_init__() {
        this.state.count = 0;
        return [];
    },
    async increment(n) {
        this.state.count += (typeof n === 'number' ? n : 1);
        return [null, this.state.count];
    }
};

caf.init(module);
