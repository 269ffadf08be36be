// One awaited step of an SDK callback API, for the scripts here: resolves with the callback's
// value, rejects with what failed (named `what`) or after 20 s, so a silent server fails the
// test instead of hanging it.
'use strict';

module.exports = function step(what, fn) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('timed out: ' + what)), 20000);
    fn((err, value) => {
      clearTimeout(timer);
      if (err) reject(new Error(what + ': ' + (err.name || '') + ' ' + err.message));
      else resolve(value);
    });
  });
};
