-- Test-only Prosody module: connect to listed remote domains at a fixed
-- address instead of asking DNS (the test domains do not resolve).
--   test_static_s2s = { ["starling.localhost"] = { "127.0.0.1", 5269 } }
module:set_global();

local service = require "net.resolvers.service";
local manual = require "net.resolvers.manual";

local routes = module:get_option("test_static_s2s", {});
local original = service._test_static_original or service.new;
service._test_static_original = original;

service.new = function (name, srv, proto, extra)
	local route = routes[name];
	if route == nil or (srv ~= "xmpp-server" and srv ~= "xmpps-server") then
		return original(name, srv, proto, extra);
	end
	if srv == "xmpps-server" then
		return manual.new({}, proto, extra); -- no direct TLS route
	end
	return manual.new({ { "tcp4", route[1], route[2], extra } }, proto, extra);
end

function module.unload()
	service.new = original;
end
